"""Values the publishers share: settings, statistics, the effects the core yields, and
the pure helpers that read a server's answer (``Retry-After``, error bodies) and
write the wire form of an event (the body of a single POST and one spool line).
"""

from __future__ import annotations

import contextvars
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import orjson

from sse_batcher._exceptions import ConfigError
from sse_batcher.batching._events import (
    DEFAULT_CHANNEL,
    check_channel,
    check_name,
    encode_data,
)
from sse_batcher.publishing._spool import default_spool_path

__all__ = [
    "IN_SENDER",
    "MAX_RETRY_AFTER",
    "RETRY_STATUSES",
    "Effect",
    "HttpResult",
    "Io",
    "Post",
    "PublisherConfig",
    "PublisherStats",
    "Retry",
    "Wait",
    "encode_event",
    "event_type",
    "in_publisher_context",
    "is_event_line",
    "retry_after_seconds",
    "server_reason",
]

MAX_RETRY_AFTER = 600.0
RETRY_STATUSES = frozenset({408, 425, 429})  # and every 5xx


# Set in a publisher's sender thread or task (and the worker threads it starts).
IN_SENDER: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sse_batcher_publisher", default=False
)


def in_publisher_context() -> bool:
    """True inside a publisher's own sender (thread, task or spool worker thread).

    ``publish()`` ignores events made there (httpx's request log, our retry
    warnings): a logging handler that ships records through the publisher would
    otherwise feed on its own traffic.
    """
    return IN_SENDER.get()


@dataclass(frozen=True, slots=True)
class PublisherConfig:
    """Validated settings; see ``RemotePublisher`` for their meaning."""

    url: str
    token: str | None = None
    source: str | None = None
    channel: str | None = None
    max_batch_size: int = 10
    flush_interval: float = 2.0
    spool_after: float | None = 30.0
    spool: bool = True
    spool_path: str | os.PathLike[str] | None = None
    max_buffer_events: int = 10_000
    timeout: float = 10.0
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url must start with http:// or https://, not {self.url[:60]!r}")
        if self.source is not None:
            check_name("source", self.source)
        if self.channel is not None:
            check_channel(self.channel)
        if self.max_batch_size < 1:
            raise ConfigError("max_batch_size must be at least 1")
        if self.flush_interval <= 0 or self.timeout <= 0 or self.max_backoff <= 0:
            raise ConfigError("flush_interval, timeout and max_backoff must be positive")
        if self.spool_after is not None and self.spool_after < 0:
            raise ConfigError("spool_after must be >= 0 or None")
        if self.max_buffer_events < self.max_batch_size:
            raise ConfigError("max_buffer_events must be at least max_batch_size")

    @property
    def events_url(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/events") else base + "/events"

    @property
    def default_source(self) -> str:
        return self.source or f"{socket.gethostname()}-{os.getpid()}"

    def resolved_spool_path(self) -> Path:
        if self.spool_path is not None:
            return Path(self.spool_path)
        return default_spool_path(self.events_url.removesuffix("/events"), self.source)


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """Counters of one publisher (events unless the name says requests or batches).

    Attributes:
        sent: events the server acknowledged (accepted, or known duplicates).
        duplicates: of those, events the server had already stored (a retried uid).
        batches: batch requests the server acknowledged.
        requests: HTTP requests made, including failed ones.
        retries: requests repeated after a network error, a timeout, 5xx or 429.
        fallbacks: batches sent one event per request (the server had no batch route).
        spooled: events written to the spool file.
        unspooled: spooled events the server has since acknowledged.
        rejected: events the server (or local validation) refused; not retried.
        rejected_reasons: the latest reasons, newest last.
        dropped: events lost on purpose, with a reason: buffer full without a spool,
            server unreachable past ``spool_after`` without a spool, publish after close.
        buffered: events waiting: in memory plus in the spool.
        spool_pending: of those, events in the spool file.
        last_error: the latest network error or retried status, if any.
    """

    sent: int = 0
    duplicates: int = 0
    batches: int = 0
    requests: int = 0
    retries: int = 0
    fallbacks: int = 0
    spooled: int = 0
    unspooled: int = 0
    rejected: int = 0
    rejected_reasons: tuple[str, ...] = ()
    dropped: int = 0
    buffered: int = 0
    spool_pending: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict (``rejected_reasons`` as a list)."""
        data = asdict(self)
        data["rejected_reasons"] = list(self.rejected_reasons)
        return data


@dataclass(frozen=True, slots=True)
class Wait:
    """Sleep until ``deadline`` (the core's clock) or until woken."""

    deadline: float


@dataclass(frozen=True, slots=True)
class Post:
    """POST ``body`` (JSON) to the events url; answer with an :class:`HttpResult`."""

    body: bytes


@dataclass(frozen=True, slots=True)
class Io:
    """Run ``fn`` (blocking local I/O); ``inline`` means it touches no file right now."""

    fn: Callable[[], Any]
    inline: bool = False


Effect = Wait | Post | Io


@dataclass(frozen=True, slots=True)
class HttpResult:
    """What a front end saw for a :class:`Post`: a response, or the error instead."""

    status: int = 0
    body: bytes = b""
    retry_after: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """A failed attempt worth repeating, and when the server asked us to come back."""

    reason: str
    retry_after: float | None = None


def retry_after_seconds(value: str | None, now_wall: float) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now_wall
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def server_reason(result: HttpResult) -> str:
    text = result.body.decode("utf-8", "replace").strip()
    try:
        parsed = orjson.loads(result.body)
    except orjson.JSONDecodeError:
        pass
    else:
        if isinstance(parsed, dict):
            for key in ("error", "detail", "message"):
                if isinstance(parsed.get(key), str):
                    text = parsed[key]
                    break
    return f"HTTP {result.status}" + (f": {text[:200]}" if text else "")


def event_type(line: bytes) -> str:
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "?"
    return str(parsed.get("type", "?")) if isinstance(parsed, dict) else "?"


def is_event_line(line: bytes) -> bool:
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("type"), str)


def encode_event(
    type: str,
    data: Mapping[str, Any] | None,
    source: str,
    ts: float,
    uid: str,
    channel: str | None = None,
) -> bytes:
    """One wire event as compact JSON: the body of a single POST and one spool line."""
    data_json = encode_data({} if data is None else data)
    fields: dict[str, Any] = {
        "type": check_name("type", type),
        "source": check_name("source", source),
        "ts": ts,
        "uid": uid,
    }
    if channel is not None and channel != DEFAULT_CHANNEL:  # the server's default
        fields["channel"] = check_channel(channel)
    head = orjson.dumps(fields)
    return head[:-1] + b',"data":' + data_json + b"}"
