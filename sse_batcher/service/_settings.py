"""``ServiceSettings``: everything that shapes the service (journal, batching, auth, limits).

One frozen dataclass is the single description of a configurable service: the
``serve`` and ``demo`` commands fill it from flags and ``SSE_BATCHER_*`` variables
(one click option per field, in ``sse_batcher/cli/_options.py``), an app that
embeds the service builds it in code, and :class:`~sse_batcher.Service` turns it
into a running journal, batcher and app. Adding a setting is one field here and
one option there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from sse_batcher._exceptions import ConfigError

__all__ = ["ServiceSettings"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ServiceSettings:
    """What the service is made of; every field has the ``serve`` flag's default.

    Attributes:
        db: SQLite journal file (ignored with ``redis_url``).
        window_ms: batching window in milliseconds.
        max_batch: members at which a batch flushes at once.
        token: bearer token required to publish (``POST /events``, ``PATCH``).
        subscribe_token: bearer token (or ``?token=``) required to read streams.
        jwt_secret: accept JWTs signed with this HMAC secret.
        jwt_public_key: accept JWTs signed with the private key of this PEM file.
        jwt_audience: JWTs must carry this ``aud``.
        jwt_issuer: JWTs must carry this ``iss``.
        cors_origin: origins allowed by CORS.
        max_subscribers: open streams allowed.
        heartbeat: seconds between idle heartbeats.
        retention_days: days the journal keeps events.
        redis_url: use a Redis Stream journal instead of SQLite.
        redis_prefix: key prefix in Redis.
        archive: also archive events as JSON lines under this directory.
        durable_ingest: answer ``POST /events`` only once the events are committed.
        dead_letter: JSON-lines file for batches the journal refused (default: see
            :attr:`dead_letter_path`).
        tail_poll_interval: seconds between checks for rows other processes commit
            to the same SQLite file (``serve --workers``); None: this process is
            the file's only writer.
    """

    db: str = "sse_events.db"
    window_ms: int = 500
    max_batch: int = 10
    token: str | None = None
    subscribe_token: str | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    cors_origin: tuple[str, ...] = ()
    max_subscribers: int = 10_000
    heartbeat: float = 15.0
    retention_days: float = 10.0
    redis_url: str | None = None
    redis_prefix: str = "sse_batcher"
    archive: str | None = None
    durable_ingest: bool = False
    dead_letter: str | None = None
    tail_poll_interval: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cors_origin, str):
            raise ConfigError("cors_origin must be a sequence of origins, not one string")
        object.__setattr__(self, "cors_origin", tuple(self.cors_origin))

    @property
    def dead_letter_path(self) -> str:
        """``dead_letter``, or a file beside the journal so nothing lives only in memory."""
        if self.dead_letter is not None:
            return self.dead_letter
        if self.redis_url is not None:
            return f"{self.redis_prefix}-dead-letter.jsonl"
        return f"{self.db}.dead-letter.jsonl"

    def with_values(self, **values: Any) -> ServiceSettings:
        """A copy with ``values`` changed; an unknown name is a :class:`ConfigError`."""
        unknown = set(values) - {field.name for field in fields(self)}
        if unknown:
            raise ConfigError(f"unknown service settings: {', '.join(sorted(unknown))}")
        return replace(self, **values)
