"""``Service``: settings → journal, sinks, batcher, hub and ASGI app, as one resource.

The one path from configuration to a running service, shared by ``sse-batcher
serve``, ``sse-batcher demo`` and an application that embeds the service::

    service = Service(db="events.db")

    @asynccontextmanager
    async def lifespan(app):
        async with service:          # journal, hub, batcher open; drained at exit
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/sse", service.app)   # GET /sse/events, POST /sse/events, /sse/ ...

Starlette does not run a mounted app's lifespan, so the host enters the service
itself (a never-entered service answers ``GET /events`` with 503 and logs how to
fix it). Served directly (``uvicorn`` on ``service.app``, or ``serve``), the app's
own lifespan enters the service.

Shutdown::

    begin_shutdown()  ─► open streams end after what they have buffered (clients
    (serve: when uvicorn    resume elsewhere with Last-Event-ID)
     stops accepting)
    leaving async with ─► begin_shutdown() if nobody did ─► batcher drains ─► hub ─► journal

A server other than ``serve`` calls :meth:`Service.begin_shutdown` when it starts to
shut down; under uvicorn, sse-starlette's own watcher does it too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from sse_batcher._exceptions import ConfigError
from sse_batcher._lifecycle import Lifecycle, Resource
from sse_batcher.batching._batcher import SSEEventBatcher
from sse_batcher.batching._journal import Journal
from sse_batcher.batching._rules import AggregationRule
from sse_batcher.batching._sink import Sink
from sse_batcher.service._app import create_app
from sse_batcher.service._auth import Verifier
from sse_batcher.service._settings import ServiceSettings

__all__ = ["Service"]

logger = logging.getLogger("sse_batcher.service")


def _journal_for(settings: ServiceSettings) -> Journal:
    retention = settings.retention_days * 86400
    if settings.redis_url is not None:
        from sse_batcher.journals.redis._journal import RedisJournal

        return RedisJournal(
            settings.redis_url, prefix=settings.redis_prefix, retention_seconds=retention
        )
    from sse_batcher.journals.sqlite._journal import SQLiteJournal

    return SQLiteJournal(
        settings.db, retention_seconds=retention, tail_poll_interval=settings.tail_poll_interval
    )


def _sinks_for(settings: ServiceSettings) -> list[Sink]:
    if settings.archive is None:
        return []
    from sse_batcher.sinks._archive import ArchiveSink

    return [ArchiveSink(settings.archive)]


def _verifiers_for(settings: ServiceSettings) -> list[Verifier]:
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


class Service(Resource):
    """The service built from settings: journal, sinks, batcher, hub and the ASGI app.

    An async context manager: entering opens the journal, the hub and the batcher;
    leaving ends open streams, drains the batcher and closes the rest. It opens
    once (create another to start again).

    Args:
        settings: the base settings (default: the ``serve`` defaults).
        rules: aggregation rules for the batcher.
        journal: use this journal instead of the one ``settings`` describes.
        sinks: sinks to feed besides ``settings.archive``'s.
        **values: settings to change, by field name (``db="events.db"``,
            ``window_ms=200``, ``token="..."``); see :class:`ServiceSettings`.

    Attributes:
        settings: the settings in effect.
        journal: the journal events are written to and streamed from.
        batcher: emit here from the host's own code and workers
            (:class:`SSEBroadcasterMixin` takes it as ``batcher=``).
        app: the ASGI app (routes of the HTTP contract and the dashboard);
            mount it under any prefix.
    """

    def __init__(
        self,
        settings: ServiceSettings | None = None,
        *,
        rules: Sequence[AggregationRule] = (),
        journal: Journal | None = None,
        sinks: Sequence[Sink] = (),
        **values: Any,
    ) -> None:
        self.settings = (settings or ServiceSettings()).with_values(**values)
        s = self.settings
        self.journal = journal if journal is not None else _journal_for(s)
        self.batcher = SSEEventBatcher(
            self.journal,
            rules=rules,
            window=s.window_ms / 1000,
            max_batch=s.max_batch,
            dead_letter_path=s.dead_letter_path,
            sinks=[*sinks, *_sinks_for(s)],
        )
        self.app: Starlette = create_app(
            self.batcher,
            token=s.token,
            subscribe_token=s.subscribe_token,
            verifiers=_verifiers_for(s),
            cors_origins=s.cors_origin,
            max_subscribers=s.max_subscribers,
            heartbeat=s.heartbeat,
            durable_ingest=s.durable_ingest,
            manage_lifecycle=False,
        )
        # The app's own lifespan runs the hub; the service runs it (so a mounted app,
        # whose lifespan Starlette never runs, works) and takes the app's place.
        self._hub_lifespan = self.app.router.lifespan_context
        self.app.router.lifespan_context = self._served
        self._begin_shutdown: Callable[[], None] = self.app.state.begin_shutdown

    def _describe(self) -> str:
        return f"Service({self.journal!r})"

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        # Exit order is the reverse: streams end, the batcher drains into the journal
        # (the hub's tail still delivers what it writes), the hub, then the journal.
        async with self.journal, self._hub_lifespan(self.app), self.batcher:
            try:
                yield
            finally:
                self.begin_shutdown()

    def begin_shutdown(self) -> None:
        """End every open stream after what it has buffered; new streams are refused.

        Call it when the server starts to shut down (``serve`` does): servers wait
        for open responses to finish before they leave the lifespan, and an SSE
        stream never finishes by itself. Safe to call more than once.
        """
        self._begin_shutdown()

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """A lifespan for a host app that needs nothing else at startup:
        ``FastAPI(lifespan=service.lifespan)``."""
        async with self:
            yield

    @asynccontextmanager
    async def _served(self, app: Starlette) -> AsyncIterator[None]:
        # Served directly (uvicorn runs this app's lifespan): open the service, unless
        # the host already did.
        if self.lifecycle is not Lifecycle.UNOPENED:
            yield
            return
        async with self:
            yield
