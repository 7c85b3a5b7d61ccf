"""Real servers for tests: a ``sse-batcher serve`` subprocess, or an ASGI app in-process.

Both listen on a free loopback port and are ready when entered::

    with ServerProcess(["--db", str(tmp_path / "e.db")]) as server:   # or ``async with``
        httpx.get(f"{server.url}/health")
        output = server.stop()            # SIGTERM, wait, return stdout+stderr

    async with serve_app(create_app(batcher)) as url:
        ...                               # uvicorn (httptools) on 127.0.0.1

    async with app_client(app) as client:  # lifespan + httpx.ASGITransport, no sockets
        await client.get("/stats")         # (plain request/response routes only)

Kept small and stable: other test modules rely on it.
"""

from __future__ import annotations

import os
import signal as signals
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import IO, Any, Self

import anyio
import httpx
import uvicorn

from .conftest import free_port

__all__ = ["ServerProcess", "app_client", "serve_app"]

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


class ServerProcess:
    """``python -m sse_batcher serve --port <free> *args`` as a subprocess.

    Entering (``with`` or ``async with``) starts it and waits until ``GET /health``
    answers 200; leaving stops it (SIGTERM, then SIGKILL) if still running.

    Args:
        args: extra ``serve`` arguments, e.g. ``["--db", path, "--window-ms", "50"]``.
        env: extra environment variables (added to a copy of ``os.environ``).
        port: listen on this port (e.g. a restart on the previous server's port);
            default a free one. A ``--port`` in ``args`` is honoured too.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        args = list(args)
        if "--port" in args:  # click keeps the last one: so does the url
            port = int(args[len(args) - 1 - args[::-1].index("--port") + 1])
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        self._args = [
            sys.executable,
            "-m",
            "sse_batcher",
            "serve",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *args,
        ]
        self._env = {**os.environ, **(env or {})}
        self._output: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    # -- starting ------------------------------------------------------------------

    def start(self) -> None:
        """Start the process (without waiting for it to be ready)."""
        if self.process is not None:
            raise RuntimeError("a ServerProcess runs once; create another")
        # A file, not a pipe: nobody reads while it runs, and a full pipe would block it.
        self._output = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            self._args, stdout=self._output, stderr=subprocess.STDOUT, env=self._env
        )

    def _ready_or_raise(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
        try:
            return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll ``GET /health`` until it answers 200 (raise with the output on timeout)."""
        deadline = time.monotonic() + timeout
        while not self._ready_or_raise():
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"server not ready after {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    async def await_ready(self) -> None:
        """``wait_ready`` without blocking the event loop."""
        deadline = time.monotonic() + START_TIMEOUT
        while not await anyio.to_thread.run_sync(self._ready_or_raise):
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"server not ready after {START_TIMEOUT} s:\n{self.output()}")
            await anyio.sleep(0.05)

    # -- stopping ------------------------------------------------------------------

    def output(self) -> str:
        """Everything the process printed so far (stdout and stderr)."""
        if self._output is None:
            return ""
        self._output.seek(0)
        return self._output.read().decode(errors="replace")

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, signal: int = signals.SIGTERM, timeout: float = STOP_TIMEOUT) -> str:
        """Send ``signal``, wait for the exit (SIGKILL after ``timeout``), return the output."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.output()

    def kill(self) -> None:
        """SIGKILL the process (no drain) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        """Stop if running and release the output file."""
        if self.process is not None:
            self.stop()
        if self._output is not None:
            self._output.close()
            self._output = None

    # -- context managers ----------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        self.start()
        try:
            await self.await_ready()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.close)


@asynccontextmanager
async def serve_app(app: Any, **config: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn (httptools) on a free loopback port; yield its URL.

    The server runs in a task group of the current task; leaving the block shuts it
    down (open SSE streams end through sse-starlette's shutdown watch) and runs the
    app's lifespan shutdown.

    Args:
        app: the ASGI application.
        config: extra ``uvicorn.Config`` arguments.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound here: no race for the port
    port = sock.getsockname()[1]
    settings = {
        "http": "httptools",
        "lifespan": "on",
        "log_level": "warning",
        "timeout_graceful_shutdown": 10,
        **config,
    }
    server = uvicorn.Server(uvicorn.Config(app, **settings))
    try:
        async with anyio.create_task_group() as tg:
            finished = anyio.Event()

            async def run() -> None:
                try:
                    await server.serve(sockets=[sock])
                finally:
                    finished.set()

            tg.start_soon(run)
            with anyio.fail_after(START_TIMEOUT):
                while not server.started:
                    if finished.is_set():
                        raise RuntimeError("uvicorn did not start (see the log)")
                    await anyio.sleep(0.01)
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True
    finally:
        sock.close()


@asynccontextmanager
async def app_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run a Starlette app's lifespan and yield an in-process client for it.

    For plain request/response routes; streaming needs :func:`serve_app`.
    """
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        yield client
