"""``sse-batcher``: the command line (``serve``, plus ``demo`` and ``publish``).

Every ``serve`` option can also come from an ``SSE_BATCHER_<NAME>`` environment
variable (``--window-ms`` ← ``SSE_BATCHER_WINDOW_MS``); the command line wins.
Values are validated after parsing so a bad one, from either place, is reported
in one line naming where it came from, with exit status 2.

Other subcommands reuse the pieces: :func:`add_server_options`,
:func:`build_app` and :func:`run_server`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE

from sse_batcher._exceptions import ConfigError, SSEBatcherError
from sse_batcher.cli import _demo as _demo_cli
from sse_batcher.cli import _publish as _publish_cli

if TYPE_CHECKING:
    from sse_batcher.service._auth import Verifier

__all__ = [
    "ServerSettings",
    "add_server_options",
    "build_app",
    "main",
    "run_server",
    "server_settings",
]

ENV_PREFIX = "SSE_BATCHER_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
GRACEFUL_SHUTDOWN_TIMEOUT = 10  # seconds; streams normally end within 0.5 s


class _Parser(argparse.ArgumentParser):
    """Reports usage errors in one line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# -- value checks (each raises ValueError with the reason) ------------------------------


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"must be a positive number, got {text}")
    return value


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _secret(text: str) -> str:
    if not text or text != text.strip():
        raise ValueError("must be non-empty, without surrounding spaces")
    return text


def _origin(text: str) -> str:
    if text != "*" and not text.startswith(("http://", "https://")):
        raise ValueError(f"an origin looks like https://example.com (or *), got {text!r}")
    return text.rstrip("/")


def _redis_url(text: str) -> str:
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"expected redis://, rediss:// or unix:// URL, got {text!r}")
    return text


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return text.lower()


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


@dataclass(frozen=True)
class _Option:
    flag: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None
    switch: bool = False  # a flag without a value (env: true/false)
    repeat: bool = False  # may be given several times (env: comma-separated)

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


_OPTIONS = (
    _Option("--host", _text, "127.0.0.1", "interface to listen on"),
    _Option("--port", _int_in(1, 65535), 8000, "TCP port to listen on"),
    _Option("--db", _text, "sse_events.db", "SQLite journal file", "PATH"),
    _Option("--window-ms", _int_in(10, 60_000), 500, "batching window in milliseconds", "MS"),
    _Option("--max-batch", _int_in(1, 10_000), 10, "members at which a batch flushes at once", "N"),
    _Option(
        "--token", _secret, None, "bearer token required to publish (POST /events, PATCH)", "TOKEN"
    ),
    _Option(
        "--subscribe-token",
        _secret,
        None,
        "bearer token (or ?token=) required to read streams",
        "TOKEN",
    ),
    _Option(
        "--jwt-secret",
        _secret,
        None,
        "accept JWTs signed with this HMAC secret (HS256/384/512, 32+ bytes); their "
        "sse_batcher claim grants channels",
        "SECRET",
    ),
    _Option(
        "--jwt-public-key",
        _text,
        None,
        "accept JWTs signed with the private key of this PEM public key (RSA, EC, Ed25519)",
        "FILE",
    ),
    _Option("--jwt-audience", _text, None, "JWTs must carry this aud", "AUD"),
    _Option("--jwt-issuer", _text, None, "JWTs must carry this iss", "ISS"),
    _Option("--cors-origin", _origin, (), "allowed CORS origin; repeatable", "ORIGIN", repeat=True),
    _Option("--max-subscribers", _int_in(1, 1_000_000), 10_000, "open streams allowed", "N"),
    _Option("--heartbeat", _positive_float, 15.0, "seconds between idle heartbeats", "SECONDS"),
    _Option(
        "--send-timeout",
        _positive_float,
        30.0,
        "seconds a client may leave sent data unread (or unacknowledged) before the "
        "kernel drops its connection",
        "SECONDS",
    ),
    _Option("--retention-days", _positive_float, 10.0, "days the journal keeps events", "DAYS"),
    _Option("--redis-url", _redis_url, None, "use a Redis Stream journal instead of SQLite", "URL"),
    _Option("--redis-prefix", _text, "sse_batcher", "key prefix in Redis", "PREFIX"),
    _Option("--archive", _text, None, "also archive events as JSON lines under DIR", "DIR"),
    _Option(
        "--durable-ingest",
        _boolean,
        False,
        "answer POST /events only once the events are committed",
        switch=True,
    ),
    _Option(
        "--dead-letter",
        _text,
        None,
        "JSON-lines file for batches the journal refused; re-appended when it recovers "
        "and at the next start (default: beside --db, or <redis-prefix>-dead-letter.jsonl)",
        "PATH",
    ),
    _Option("--log-level", _log_level, "info", f"one of {', '.join(LOG_LEVELS)}", "LEVEL"),
    _Option(
        "--workers",
        _int_in(1, 64),
        1,
        "processes serving one socket and one journal (SQLite file or Redis); "
        "each runs the whole service",
        "N",
    ),
)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """Add every ``serve`` option (host, port, journal, batching, auth, limits) to ``parser``.

    Values are checked later by :func:`server_settings` / :func:`build_app`, which
    also read the ``SSE_BATCHER_*`` environment variables.

    Args:
        parser: a subcommand's parser.
    """
    group = parser.add_argument_group("server options (each also from SSE_BATCHER_<NAME>)")
    for option in _OPTIONS:
        shown = "off" if option.default in (None, (), False) else option.default
        if "(default:" in option.help:  # the option explains its own default
            text = f"{option.help[:-1]}; env {option.env})"
        else:
            text = f"{option.help} (default: {shown}; env {option.env})"
        if option.switch:
            group.add_argument(option.flag, action="store_const", const="true", help=text)
        elif option.repeat:
            group.add_argument(option.flag, action="append", metavar=option.metavar, help=text)
        else:
            group.add_argument(option.flag, metavar=option.metavar, help=text)


@dataclass(frozen=True)
class ServerSettings:
    """The checked ``serve`` options (see ``sse-batcher serve --help``)."""

    host: str
    port: int
    db: str
    window_ms: int
    max_batch: int
    token: str | None
    subscribe_token: str | None
    jwt_secret: str | None
    jwt_public_key: str | None
    jwt_audience: str | None
    jwt_issuer: str | None
    cors_origin: tuple[str, ...]
    max_subscribers: int
    heartbeat: float
    send_timeout: float
    retention_days: float
    redis_url: str | None
    redis_prefix: str
    archive: str | None
    durable_ingest: bool
    dead_letter: str | None
    log_level: str
    workers: int

    @property
    def dead_letter_path(self) -> str:
        """``--dead-letter``, or a file beside the journal so nothing lives only in memory."""
        if self.dead_letter is not None:
            return self.dead_letter
        if self.redis_url is not None:
            return f"{self.redis_prefix}-dead-letter.jsonl"
        return f"{self.db}.dead-letter.jsonl"


def _resolve(option: _Option, given: Any) -> Any:
    if given is not None:
        where, raw = option.flag, given
    elif option.env in os.environ:
        where, raw = option.env, os.environ[option.env]
        if option.repeat:
            raw = [part for part in raw.split(",") if part.strip()]
    else:
        return option.default
    try:
        if option.repeat:
            return tuple(option.parse(item.strip()) for item in raw)
        return option.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def server_settings(args: argparse.Namespace) -> ServerSettings:
    """Check the parsed options (falling back to the environment, then the defaults).

    Raises:
        ConfigError: a value is invalid; the message names the flag or variable.
    """
    values = {option.dest: _resolve(option, getattr(args, option.dest)) for option in _OPTIONS}
    return ServerSettings(**values)


def build_app(args: argparse.Namespace) -> Starlette:
    """The journal (Redis with ``--redis-url``, else SQLite), sinks, batcher and app.

    The app's lifespan opens and drains them; ``app.state.batcher`` stays readable
    after the server stops (for the exit summary).

    Raises:
        ConfigError: an option is invalid.
    """
    return build_settings_app(server_settings(args))


def build_settings_app(settings: ServerSettings, slot: int | None = None) -> Starlette:
    """:func:`build_app` from checked settings; ``slot``: this ``--workers`` process's slot.

    A worker's journal polls for the other workers' commits, and its dead-letter
    file and archive tree are its own (see ``_workers.py``).
    """
    from sse_batcher.batching._batcher import SSEEventBatcher
    from sse_batcher.batching._journal import Journal
    from sse_batcher.batching._sink import Sink
    from sse_batcher.cli._workers import TAIL_POLL_INTERVAL, slot_path
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
            tail_poll_interval=None if slot is None else TAIL_POLL_INTERVAL,
        )
    sinks: list[Sink] = []
    if settings.archive is not None:
        from sse_batcher.sinks._archive import ArchiveSink

        archive = settings.archive
        sinks.append(ArchiveSink(archive if slot is None else os.path.join(archive, f"w{slot}")))
    dead_letter = settings.dead_letter_path
    batcher = SSEEventBatcher(
        journal,
        window=settings.window_ms / 1000,
        max_batch=settings.max_batch,
        dead_letter_path=dead_letter if slot is None else slot_path(dead_letter, slot),
        sinks=sinks,
    )
    return create_app(
        batcher,
        token=settings.token,
        subscribe_token=settings.subscribe_token,
        verifiers=_jwt_verifiers(settings),
        cors_origins=settings.cors_origin,
        max_subscribers=settings.max_subscribers,
        heartbeat=settings.heartbeat,
        durable_ingest=settings.durable_ingest,
    )


def _jwt_verifiers(settings: ServerSettings) -> list[Verifier]:
    """A JWTVerifier when --jwt-secret or --jwt-public-key is given."""
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


def run_server(
    app: Starlette,
    host: str,
    port: int,
    *,
    log_level: str = "info",
    send_timeout: float = 30.0,
) -> bool:
    """Serve ``app`` with uvicorn (uvloop + httptools) until SIGINT or SIGTERM.

    The app's lifespan drains the batcher before this returns. Returns False when
    the app failed to start (the reason is logged).

    Args:
        app: the ASGI app (from :func:`build_app` or ``create_app``).
        host: interface to listen on.
        port: TCP port.
        log_level: uvicorn's log level.
        send_timeout: seconds a client may leave sent data unread before its
            connection is dropped (see :func:`listening_socket`).
    """
    try:
        sock = listening_socket(host, port, send_timeout=send_timeout)
    except OSError as exc:
        logging.getLogger("sse_batcher.cli").error("cannot listen on %s:%s: %s", host, port, exc)
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
    server = uvicorn.Server(config)

    # uvicorn re-raises the signal that stopped it once it has shut down; with the
    # default handlers that would be a KeyboardInterrupt or a kill by SIGTERM before
    # the exit summary. These handlers run only after uvicorn restored them.
    def stopped(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("sse_batcher.cli").debug("stopped by signal %d", signum)

    previous = {sig: signal.signal(sig, stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:
        # uvicorn exits with STARTUP_FAILURE when the lifespan startup fails (journal
        # cannot open) or the port cannot be bound; it has logged the reason.
        if exc.code != STARTUP_FAILURE:
            raise
        return False
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return server.started


def _serve(args: argparse.Namespace) -> int:
    settings = server_settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.workers > 1:
        return _serve_workers(settings)
    app = build_app(args)
    if not run_server(
        app,
        settings.host,
        settings.port,
        log_level=settings.log_level,
        send_timeout=settings.send_timeout,
    ):
        print(
            "sse-batcher serve: error: the server did not start (see the log above)",
            file=sys.stderr,
        )
        return 1
    stats = app.state.batcher.stats()
    print(
        f"sse-batcher: stopped; {stats.events_in} events in, {stats.messages_out} messages out "
        f"({stats.members_out} events written in {stats.writes} writes), "
        f"{stats.dropped_total} dropped, {stats.dead_letter_pending} dead-lettered",
        flush=True,
    )
    return 0


def _serve_workers(settings: ServerSettings) -> int:
    from sse_batcher.cli._workers import WorkerAppFactory, run_workers

    factory = WorkerAppFactory(
        partial(build_settings_app, settings), settings.dead_letter_path, settings.log_level
    )
    try:
        sock = listening_socket(settings.host, settings.port, send_timeout=settings.send_timeout)
    except OSError as exc:
        print(f"sse-batcher serve: error: cannot listen: {exc}", file=sys.stderr)
        return 1
    if not run_workers(
        factory,
        sock,
        workers=settings.workers,
        log_level=settings.log_level,
        graceful_timeout=GRACEFUL_SHUTDOWN_TIMEOUT,
    ):
        print(
            "sse-batcher serve: error: the workers did not start (see the log above)",
            file=sys.stderr,
        )
        return 1
    print(f"sse-batcher: stopped {settings.workers} workers", flush=True)
    return 0


def _subcommands(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the service (SSE stream, ingest, dashboard)",
        description="Run the sse_batcher service with uvicorn (uvloop + httptools). "
        "SIGINT/SIGTERM end open streams, drain the batcher and print what was written.",
    )
    add_server_options(serve)
    serve.set_defaults(func=_serve)
    _demo_cli.add_parser(subparsers)
    _publish_cli.add_parser(subparsers)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sse-batcher`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _Parser(
        prog="sse-batcher",
        description="Batch worker events, journal them and stream them over resumable SSE.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _subcommands(subparsers)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"sse-batcher {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SSEBatcherError as exc:
        print(f"sse-batcher {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
