"""``serve --workers N``: N processes on one host, one listening socket, one journal.

```
sse-batcher serve --workers 2
  parent: binds the socket, runs uvicorn's Multiprocess supervisor
          (restarts a worker that dies, SIGTERM/SIGINT stop them all)
    ├─ worker 0 ─ whole app: batcher, journal, hub ─┐
    └─ worker 1 ─ whole app: batcher, journal, hub ─┴─ same SQLite file (or Redis)
```

Each worker accepts from the shared socket and runs the full service. With the
SQLite journal the ids stay one sequence (assigned inside each ``BEGIN
IMMEDIATE``) and each worker's tail polls the file every ``TAIL_POLL_INTERVAL``,
so a subscriber on any worker gets every event, in id order, and resumes on any
other. With Redis every worker is simply another node.

A worker claims the lowest free *slot* by ``flock`` on ``<dead-letter>.w<slot>.lock``
(the kernel releases it when the process dies, so a restarted worker takes the
slot of the one it replaces). The slot names what is per process: the
dead-letter file (``…dead-letter.w<slot>.jsonl``, re-appended by whoever holds the
slot next) and the archive tree (``ARCHIVE/w<slot>/…``). Every response carries
``X-SSE-Batcher-Worker: <slot>/<pid>``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.supervisors.multiprocess import Multiprocess

from sse_batcher._exceptions import ConfigError
from sse_batcher.cli._logging import log_config

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one worker only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MAX_SLOTS",
    "TAIL_POLL_INTERVAL",
    "WORKER_HEADER",
    "WorkerAppFactory",
    "WorkerHeader",
    "WorkerSlot",
    "claim_slot",
    "run_workers",
    "slot_path",
]

logger = logging.getLogger("sse_batcher.cli")

# Each worker's tail reads the newest id this often (every 10 ms after a quiet
# second, see journals/sqlite/_tail.py), so rows other workers commit reach this
# worker's subscribers within a few milliseconds.
TAIL_POLL_INTERVAL = 0.002
WORKER_HEADER = "x-sse-batcher-worker"
# More slots than workers: during a SIGHUP rolling restart old and new workers overlap.
MAX_SLOTS = 256
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def slot_path(path: str, slot: int) -> str:
    """``path`` with ``.w<slot>`` before its extension: ``x.jsonl`` → ``x.w1.jsonl``."""
    root, ext = os.path.splitext(path)
    return f"{root}.w{slot}{ext}"


@dataclass(frozen=True)
class WorkerSlot:
    """The slot this worker process holds (its lock stays open for the process's life)."""

    index: int
    lock_fd: int


def claim_slot(dead_letter_path: str) -> WorkerSlot:
    """Lock the lowest free slot of ``dead_letter_path``.

    Raises:
        ConfigError: every slot is held (or the directory is not writable).
    """
    if fcntl is None:  # pragma: no cover
        raise ConfigError("--workers needs flock (POSIX)")
    for index in range(MAX_SLOTS):
        lock = slot_path(dead_letter_path, index) + ".lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot create the worker lock {lock!r}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return WorkerSlot(index, fd)
    raise ConfigError(f"all {MAX_SLOTS} worker slots of {dead_letter_path!r} are held")


class WorkerHeader:
    """ASGI middleware: every HTTP response says which worker process served it."""

    def __init__(self, app: ASGIApp, slot: int) -> None:
        self.app = app
        self.state = getattr(app, "state", None)  # the exit summary and tests read it
        self._value = f"{slot}/{os.getpid()}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", ()),
                    (WORKER_HEADER.encode(), self._value),
                ]
            await send(message)

        await self.app(scope, receive, send_with_header)


def run_workers(
    app_factory: Callable[[], ASGIApp],
    sock: socket.socket,
    *,
    workers: int,
    log_level: str,
    graceful_timeout: int,
) -> bool:
    """Serve with ``workers`` processes under uvicorn's supervisor until SIGINT/SIGTERM.

    Args:
        app_factory: picklable; called once in each worker process to build its app.
        sock: the bound, listening socket (closed on return).
        workers: how many processes (>= 2).
        log_level: uvicorn's log level.
        graceful_timeout: seconds each worker waits for open connections at shutdown.

    Returns:
        False when a worker failed to start (the supervisor then stops them all).
    """
    # uvicorn hands the config (app factory included) to each worker by pickling
    # it, and the socket by fd passing: the workers accept from one listening queue.
    config = uvicorn.Config(
        app_factory,
        factory=True,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=log_level,
        log_config=log_config(),
        timeout_graceful_shutdown=graceful_timeout,
    )
    supervisor = Multiprocess(config, sockets=[sock])
    try:
        supervisor.run()
    finally:
        sock.close()
    return not any(p.exitcode == uvicorn.config.STARTUP_FAILURE for p in supervisor.processes)


@dataclass(frozen=True)
class WorkerAppFactory:
    """Builds one worker's app in its own process (picklable: uvicorn sends it there).

    Attributes:
        build: makes the service for a slot (a module-level function bound to settings).
        dead_letter_path: the configured dead-letter file; slots are claimed beside it.
        log_level: the log level for this process.
    """

    build: Callable[[int], ASGIApp]
    dead_letter_path: str
    log_level: str

    def __call__(self) -> ASGIApp:
        logging.basicConfig(
            level=self.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        slot = claim_slot(self.dead_letter_path)
        logger.info("worker slot %d in process %d", slot.index, os.getpid())
        return WorkerHeader(self.build(slot.index), slot.index)
