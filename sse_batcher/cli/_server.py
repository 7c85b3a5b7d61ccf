"""Serving an app with uvicorn: the listening socket, the signals, the shutdown hook."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import STARTUP_FAILURE

from sse_batcher._exceptions import ConfigError
from sse_batcher.cli._logging import log_config
from sse_batcher.cli._options import ServerSettings
from sse_batcher.embedding._service import Service
from sse_batcher.service._settings import ServiceSettings

__all__ = [
    "ServiceServer",
    "check_paths",
    "configure_logging",
    "listening_socket",
    "run_server",
    "serve_service",
    "shown_url",
]

logger = logging.getLogger("sse_batcher.cli")

GRACEFUL_SHUTDOWN_TIMEOUT = 10  # seconds; streams normally end within milliseconds


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def check_paths(settings: ServiceSettings) -> None:
    """Refuse, in one line, files whose directory does not exist (before any traceback).

    Raises:
        ConfigError: names the flag and the missing directory.
    """
    files = [("--dead-letter", settings.dead_letter_path)]
    if settings.redis_url is None:
        files.insert(0, ("--db", settings.db))
    for flag, path in files:
        directory = Path(path).parent
        if not directory.is_dir():
            raise ConfigError(f"{flag}: the directory {str(directory)!r} does not exist")


def shown_url(host: str, port: int) -> str:
    """The address to print: a wildcard host is shown as loopback."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def serve_service(
    service: Service,
    settings: ServerSettings,
    *,
    app: ASGIApp | None = None,
    stop_after: float | None = None,
) -> bool:
    """Run ``app`` (default ``service.app``) with :func:`run_server`; the service owns
    shutdown: its streams end as soon as uvicorn stops accepting.

    Args:
        service: the service whose streams end at shutdown.
        settings: where to listen, how to log.
        app: the app to serve, when a host app wraps the service (the demo).
        stop_after: seconds after which the server stops as if interrupted.
    """

    def started(server: uvicorn.Server) -> None:
        logger.info("listening on %s (dashboard at /)", shown_url(settings.host, settings.port))
        if stop_after is not None:
            # The same path as Ctrl-C: uvicorn's graceful shutdown.
            loop = asyncio.get_running_loop()
            loop.call_later(stop_after, setattr, server, "should_exit", True)

    return run_server(
        service.app if app is None else app,
        settings.host,
        settings.port,
        log_level=settings.log_level,
        send_timeout=settings.send_timeout,
        on_shutdown=service.begin_shutdown,
        on_started=started,
    )


def listening_socket(host: str, port: int, *, send_timeout: float) -> socket.socket:
    """A bound, listening TCP socket whose connections give up on stuck peers.

    ``TCP_USER_TIMEOUT`` (Linux; inherited by accepted sockets) makes the kernel
    drop a connection whose sent data stays unacknowledged, or unsent because the
    peer's window is zero, for ``send_timeout`` seconds: a client that stopped
    reading or whose network vanished. uvicorn closes a failed response with
    ``transport.close()``, which waits for the peer to read, so without this such
    a socket and its buffers would stay open for good.

    Raises:
        OSError: the address cannot be bound.
    """
    sock = socket.create_server((host, port), backlog=2048, reuse_port=False)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(send_timeout * 1000))
    return sock


class ServiceServer(uvicorn.Server):
    """uvicorn's server, telling the app when shutdown begins.

    uvicorn waits for open connections to finish before it runs the lifespan
    shutdown, and an SSE stream never finishes by itself: ``on_shutdown`` (the
    service ending its streams) runs first, in the event loop, as soon as uvicorn
    stops accepting, without polling or signal-handler patching.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        on_started: Callable[[uvicorn.Server], None] | None,
        on_shutdown: Callable[[], None] | None,
    ) -> None:
        super().__init__(config)
        self._on_started = on_started
        self._on_shutdown = on_shutdown

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit and self._on_started is not None:
            self._on_started(self)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._on_shutdown is not None:
            self._on_shutdown()
        await super().shutdown(sockets)


def run_server(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    log_level: str = "info",
    send_timeout: float = 30.0,
    on_shutdown: Callable[[], None] | None = None,
    on_started: Callable[[uvicorn.Server], None] | None = None,
) -> bool:
    """Serve ``app`` with uvicorn (uvloop + httptools) until SIGINT or SIGTERM.

    The app's lifespan drains the batcher before this returns. Returns False when
    the app failed to start (the reason is logged).

    Args:
        app: the ASGI app (a :class:`~sse_batcher.Service`'s ``app``, or ``create_app``'s).
        host: interface to listen on.
        port: TCP port.
        log_level: uvicorn's log level.
        send_timeout: seconds a client may leave sent data unread before its
            connection is dropped (see :func:`listening_socket`).
        on_shutdown: called in the event loop when shutdown begins, before uvicorn
            waits for open connections (ends the SSE streams).
        on_started: called with the server once it listens (``server.should_exit =
            True`` from the event loop stops it like a signal).
    """
    try:
        sock = listening_socket(host, port, send_timeout=send_timeout)
    except OSError as exc:
        logger.error("cannot listen on %s:%s: %s", host, port, exc)
        return False
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=log_level,
        log_config=log_config(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_TIMEOUT,
    )
    server = ServiceServer(config, on_started, on_shutdown)

    # uvicorn re-raises the signal that stopped it once it has shut down; with the
    # default handlers that would be a KeyboardInterrupt or a kill by SIGTERM before
    # the exit summary. These handlers run only after uvicorn restored them.
    def stopped(signum: int, frame: FrameType | None) -> None:
        logger.debug("stopped by signal %d", signum)

    previous = {sig: signal.signal(sig, stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:
        # uvicorn exits with STARTUP_FAILURE when the lifespan startup fails (journal
        # cannot open); it has logged the reason.
        if exc.code != STARTUP_FAILURE:
            raise
        return False
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return server.started
