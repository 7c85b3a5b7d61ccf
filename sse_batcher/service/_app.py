"""``create_app``: the Starlette service around a batcher, its journal and a hub.

Routes (the HTTP contract, documented in docs/)::

    GET  /events               SSE stream (replay after Last-Event-ID, then live)
    POST /events               ingest: object, array or {"events": [...]}
    GET  /events/history       the same events as JSON pages
    GET  /workers              sources seen, counts, batching switch
    PATCH /workers/{name}      {"batching": bool}
    GET  /stats  /metrics      counters as JSON / Prometheus text
    GET  /health               200 when the journal answers, 503 otherwise
    GET  /  and  /static/*     the dashboard

Shutdown::

    begin_shutdown() (``Service`` / ``serve`` call it when the server stops accepting;
    under another uvicorn, the app's one exit watcher, sse-starlette's, does) ─► open
    streams end (clients reconnect elsewhere with Last-Event-ID) ─► lifespan exit:
    close any stream left ─► the batcher drains (its async with ends) ─► hub ─► journal

A hub that was never started (the app mounted in a host whose lifespan does not
enter the service) answers ``GET /events`` with 503 and logs how to fix it, instead
of streams that end at once and a browser that retries forever.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sse_batcher._exceptions import ConfigError, InvalidEvent
from sse_batcher._lifecycle import Lifecycle
from sse_batcher.batching._batcher import SSEEventBatcher
from sse_batcher.batching._journal import Journal
from sse_batcher.service._auth import AuthGate, Capability, Grant, StaticTokens, Verifier
from sse_batcher.service._channels import (
    ALL_CHANNELS,
    MAX_CHANNEL_PATTERNS,
    ChannelFilter,
    check_pattern,
    normalize,
)
from sse_batcher.service._history import HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT, history_page
from sse_batcher.service._hub import Hub
from sse_batcher.service._ingest import Ingest
from sse_batcher.service._operator import STATIC_DIR, OperatorRoutes
from sse_batcher.service._response import EventStream, wait_for_server_exit
from sse_batcher.service._responses import NOT_STARTED, error, json_http_error

__all__ = ["create_app"]

logger = logging.getLogger("sse_batcher.app")

SHUTDOWN_GRACE_PERIOD = 2.0  # seconds a stream may take to end cleanly at shutdown


def _csv(value: str | None) -> list[str] | None:
    if not value:
        return None
    names = [part.strip() for part in value.split(",") if part.strip()]
    return names or None


def _channel_patterns(request: Request) -> frozenset[str] | Response | None:
    """The ``?channel=`` patterns (repeated), None when absent, or the 400 to send."""
    given = request.query_params.getlist("channel")
    if not given:
        return None
    if len(given) > MAX_CHANNEL_PATTERNS:
        return error(400, f"at most {MAX_CHANNEL_PATTERNS} channel patterns per request")
    try:
        return normalize(check_pattern(pattern) for pattern in given)
    except InvalidEvent as exc:
        return error(400, f"invalid channel pattern: {exc}")


def _permitted_channels(request: Request, grant: Grant) -> frozenset[str] | Response | None:
    """What a reader gets: the patterns it asked for, each of which its grant must
    cover (else 403 before anything is read), or without ``?channel=`` everything
    its grant allows; None means every channel."""
    requested = _channel_patterns(request)
    if isinstance(requested, Response):
        return requested
    if requested is None:
        allowed = normalize(grant.subscribe)
        return None if allowed == ALL_CHANNELS else allowed
    for pattern in sorted(requested):
        if not grant.allows("subscribe", pattern):
            return error(403, f"this token does not allow channel {pattern!r}")
    return requested


class _Service:
    """The route handlers and the lifespan, sharing one configuration."""

    def __init__(
        self,
        batcher: SSEEventBatcher,
        journal: Journal,
        hub: Hub,
        gate: AuthGate,
        ingest: Ingest,
        *,
        retry_ms: int,
        manage_lifecycle: bool,
    ) -> None:
        self.batcher = batcher
        self.journal = journal
        self.hub = hub
        self.gate = gate
        self.ingest = ingest
        self.retry_ms = retry_ms
        self.manage_lifecycle = manage_lifecycle
        self.shutdown_event: anyio.Event | None = None
        self._warned_not_started = False
        self.operator = OperatorRoutes(batcher, journal, hub, gate, self.stats_sections)

    def begin_shutdown(self) -> None:
        """End every open stream after what it has buffered (idempotent)."""
        if self.shutdown_event is not None:
            self.shutdown_event.set()

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.shutdown_event = anyio.Event()
        # Task groups entered by hand must exit in reverse order, so the hub enters
        # before the batcher: exit is then batcher (drain), hub, journal. The hub's
        # tail is registered before the batcher can append anything.
        async with AsyncExitStack() as stack:
            if self.manage_lifecycle:
                await stack.enter_async_context(self.journal)
            await stack.enter_async_context(self.hub)
            await self.ingest.seed_uids(self.journal)
            if self.manage_lifecycle:
                await stack.enter_async_context(self.batcher)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._end_streams_on_shutdown, self.shutdown_event)
                try:
                    yield
                finally:
                    # Streams end first (clients resume what the drain writes from the
                    # journal); leaving the stack then drains the batcher and closes
                    # the hub and the journal.
                    self.shutdown_event.set()

    async def _end_streams_on_shutdown(self, shutdown: anyio.Event) -> None:
        # begin_shutdown() or the exit watcher (one for the app, not one per stream)
        # sets the event when the server starts to shut down; uvicorn closes
        # connections before the lifespan exits, so ending the streams then lets every
        # response finish cleanly (final chunk sent) instead of being cancelled.
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await wait_for_server_exit()
                shutdown.set()

            tg.start_soon(watch)
            await shutdown.wait()
            tg.cancel_scope.cancel()
        self.hub.close_streams()

    # -- the stream ---------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        # One route for both methods, so a 405 lists both in Allow.
        if self.hub.lifecycle is Lifecycle.UNOPENED:
            return self.not_started(request.method)
        if request.method == "POST":
            return await self.ingest.handle(request)
        return await self.stream(request)

    def not_started(self, method: str) -> Response:
        """503 for a stream asked of a hub nobody started, logged loudly once."""
        if not self._warned_not_started:
            self._warned_not_started = True
            logger.error("%s /events answered 503: %s", method, NOT_STARTED)
        return error(503, NOT_STARTED)

    async def stream(self, request: Request) -> Response:
        grant = self.gate.require(request, "subscribe", allow_query=True)
        if isinstance(grant, Response):
            return grant
        params = request.query_params
        on_reset = params.get("on_reset", "live")
        if on_reset not in ("live", "oldest"):
            return error(400, "on_reset must be 'live' or 'oldest'")
        channels = _permitted_channels(request, grant)
        if isinstance(channels, Response):
            return channels
        cursor = request.headers.get("last-event-id") or params.get("last_event_id") or None
        return EventStream(
            self.hub,
            cursor=cursor.strip() if cursor else None,
            types=_csv(params.get("types")),
            sources=_csv(params.get("sources")),
            channels=channels,
            on_reset="oldest" if on_reset == "oldest" else "live",
            retry_ms=self.retry_ms,
            grace=SHUTDOWN_GRACE_PERIOD,
            expires=grant.expires,
            closing=self.shutdown_event,
        )

    # -- JSON routes --------------------------------------------------------------

    async def history(self, request: Request) -> Response:
        grant = self.gate.require(request, "subscribe", allow_query=True)
        if isinstance(grant, Response):
            return grant
        params = request.query_params
        try:
            limit = int(params.get("limit", HISTORY_DEFAULT_LIMIT))
        except ValueError:
            return error(400, "limit must be an integer")
        if limit < 1:
            return error(400, "limit must be at least 1")
        channels = _permitted_channels(request, grant)
        if isinstance(channels, Response):
            return channels
        accept = None if channels is None else ChannelFilter(channels)
        return await history_page(
            self.journal,
            params.get("after") or None,
            min(limit, HISTORY_MAX_LIMIT),
            None if accept is None else (lambda event: accept(event.channel)),
        )

    def stats_sections(self) -> dict[str, dict[str, Any]]:
        return {
            "batcher": self.batcher.stats().as_dict(),
            "journal": dict(self.journal.stats()),
            "hub": self.hub.stats(),
            "ingest": self.ingest.stats(),
            "auth": dict(self.gate.counters),
            "sinks": self.batcher.sink_stats(),
        }


def create_app(
    batcher: SSEEventBatcher,
    *,
    journal: Journal | None = None,
    token: str | None = None,
    subscribe_token: str | None = None,
    admin_token: str | None = None,
    open_capabilities: Collection[Capability] = (),
    verifiers: Sequence[Verifier] = (),
    cors_origins: Sequence[str] = (),
    max_body_bytes: int = 1 << 20,
    max_subscribers: int = 10_000,
    buffer_size: int = 1000,
    heartbeat: float = 15.0,
    retry_ms: int = 3000,
    durable_ingest: bool = False,
    uid_ttl: float = 600.0,
    manage_lifecycle: bool = True,
) -> Starlette:
    """Build the ASGI service: SSE stream, ingest, history, workers, stats, health.

    Args:
        batcher: the batcher HTTP ingest feeds (``offer`` / ``offer_durably``).
        journal: the journal to stream from; default ``batcher.journal``.
        token: bearer token for ``POST /events`` and ``PATCH /workers/*``; None: open.
        subscribe_token: bearer token (or ``?token=``) for ``GET /events`` and
            ``GET /events/history``. ``token`` is accepted there too.
        admin_token: bearer token for ``/workers``, ``PATCH /workers/*``, ``/stats``,
            ``/metrics`` and ``/health`` details; it also publishes and reads.
        open_capabilities: capabilities (``"publish"``, ``"subscribe"``, ``"admin"``)
            open to requests without a token even though a token could protect them.
            A capability no configured token grants is open anyway.
        verifiers: more credential sources, asked after the static tokens.
        cors_origins: origins allowed by CORS (``Last-Event-ID`` is allowed).
        max_body_bytes: ingest bodies larger than this get 413.
        max_subscribers: open streams allowed; more get a retry hint and a close.
        buffer_size: messages a subscriber may fall behind before it is dropped.
        heartbeat: seconds of silence before a ``:`` comment line.
        retry_ms: the ``retry:`` reconnection delay sent at the start of a stream.
        durable_ingest: answer 202 only once the events are committed.
        uid_ttl: seconds an ingest ``uid`` is remembered for de-duplication (0: off).
        manage_lifecycle: the app's lifespan opens and closes the journal and the
            batcher; False when the caller does (the hub is always the app's).
    """
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
        raise ConfigError("max_body_bytes must be an integer")
    if max_body_bytes < 1:
        raise ConfigError(f"max_body_bytes must be at least 1, not {max_body_bytes}")
    if isinstance(retry_ms, bool) or not isinstance(retry_ms, int) or retry_ms < 0:
        raise ConfigError(f"retry_ms must be a non-negative integer, not {retry_ms!r}")
    if not uid_ttl >= 0:
        raise ConfigError(f"uid_ttl must be >= 0 seconds, not {uid_ttl!r}")
    if isinstance(cors_origins, str):
        raise ConfigError("cors_origins must be a sequence of origins, not one string")
    journal = batcher.journal if journal is None else journal
    gate = AuthGate(
        [StaticTokens(token, subscribe_token, admin_token), *verifiers], open_capabilities
    )
    service = _Service(
        batcher,
        journal,
        Hub(
            journal,
            buffer_size=buffer_size,
            heartbeat=heartbeat,
            max_subscribers=max_subscribers,
        ),
        gate,
        Ingest(
            batcher, gate, max_body_bytes=max_body_bytes, durable=durable_ingest, uid_ttl=uid_ttl
        ),
        retry_ms=retry_ms,
        manage_lifecycle=manage_lifecycle,
    )
    routes = [
        Route("/events", service.events, methods=["GET", "POST"]),
        Route("/events/history", service.history, methods=["GET"]),
        Route("/workers", service.operator.workers, methods=["GET"]),
        Route("/workers/{name}", service.operator.patch_worker, methods=["PATCH"]),
        Route("/stats", service.operator.stats, methods=["GET"]),
        Route("/metrics", service.operator.metrics, methods=["GET"]),
        Route("/health", service.operator.health, methods=["GET"]),
        Route("/", service.operator.dashboard, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    middleware = []
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST", "PATCH"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                expose_headers=["Retry-After"],
                max_age=600,
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=service.lifespan,
        exception_handlers={HTTPException: json_http_error},
    )
    app.state.batcher = batcher
    app.state.journal = journal
    app.state.hub = service.hub
    app.state.gate = gate
    app.state.begin_shutdown = service.begin_shutdown
    return app
