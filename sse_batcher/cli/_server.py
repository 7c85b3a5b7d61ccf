"""Serving an app with uvicorn: the listening socket, the signals, the shutdown hook."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp
from uvicorn.config import STARTUP_FAILURE

from sse_batcher._exceptions import ConfigError
from sse_batcher.batching._aggregation import AggregationRule
from sse_batcher.service._auth import Verifier
from sse_batcher.service._settings import ServiceSettings

__all__ = ["build_app", "configure_logging", "listening_socket", "run_server"]

logger = logging.getLogger("sse_batcher.cli")

GRACEFUL_SHUTDOWN_TIMEOUT = 10  # seconds; streams normally end within milliseconds


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def build_app(settings: ServiceSettings, *, rules: Sequence[AggregationRule] = ()) -> Starlette:
    """The journal (Redis with ``redis_url``, else SQLite), sinks, batcher and app.

    The app's lifespan opens and drains them; ``app.state.batcher`` stays readable
    after the server stops (for the exit summary).
    """
    from sse_batcher.batching._batcher import SSEEventBatcher
    from sse_batcher.batching._journal import Journal
    from sse_batcher.batching._sink import Sink
    from sse_batcher.service._app import create_app

    retention = settings.retention_days * 86400
    journal: Journal
    if settings.redis_url is not None:
        from sse_batcher.journals.redis._journal import RedisJournal

        journal = RedisJournal(
            settings.redis_url, prefix=settings.redis_prefix, retention_seconds=retention
        )
    else:
        from sse_batcher.journals.sqlite._journal import SQLiteJournal

        journal = SQLiteJournal(
            settings.db,
            retention_seconds=retention,
            tail_poll_interval=settings.tail_poll_interval,
        )
    sinks: list[Sink] = []
    if settings.archive is not None:
        from sse_batcher.sinks._archive import ArchiveSink

        sinks.append(ArchiveSink(settings.archive))
    batcher = SSEEventBatcher(
        journal,
        rules=rules,
        window=settings.window_ms / 1000,
        max_batch=settings.max_batch,
        dead_letter_path=settings.dead_letter_path,
        sinks=sinks,
    )
    return create_app(
        batcher,
        token=settings.token,
        subscribe_token=settings.subscribe_token,
        verifiers=jwt_verifiers(settings),
        cors_origins=settings.cors_origin,
        max_subscribers=settings.max_subscribers,
        heartbeat=settings.heartbeat,
        durable_ingest=settings.durable_ingest,
    )


def jwt_verifiers(settings: ServiceSettings) -> list[Verifier]:
    """A JWTVerifier when ``jwt_secret`` or ``jwt_public_key`` is set."""
    if settings.jwt_secret is None and settings.jwt_public_key is None:
        if settings.jwt_audience or settings.jwt_issuer:
            raise ConfigError("--jwt-audience/--jwt-issuer need --jwt-secret or --jwt-public-key")
        return []
    try:
        from sse_batcher.service._jwt import JWTVerifier
    except ImportError:
        raise ConfigError("JWT options need PyJWT: pip install 'sse_batcher[jwt]'") from None
    key = None
    if settings.jwt_public_key is not None:
        try:
            key = Path(settings.jwt_public_key).read_bytes()
        except OSError as exc:
            raise ConfigError(f"--jwt-public-key: {exc}") from None
    return [
        JWTVerifier(
            secret=settings.jwt_secret,
            public_key=key,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
    ]


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


class _Server(uvicorn.Server):
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
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_TIMEOUT,
    )
    server = _Server(config, on_started, on_shutdown)

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
