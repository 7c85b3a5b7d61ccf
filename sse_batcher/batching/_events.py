"""Events: the value every part passes around, its validation and its encodings.

An :class:`Event` is what a worker emitted (or what the aggregator made of several).
An :class:`EncodedEvent` is an event whose data has been encoded once, on its way
to the journal. A :class:`StoredEvent` is what the journal hands back: the event with
its id (``None`` for stream-only events) and the same encoded bytes, which every
later encoding (SSE message, history JSON, archive line) splices in rather than
encoding the data again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from sse_batcher._exceptions import InvalidEvent

__all__ = [
    "DEFAULT_CHANNEL",
    "MAX_DATA_BYTES",
    "MAX_NAME_LENGTH",
    "EncodedEvent",
    "Event",
    "Position",
    "StoredEvent",
    "check_channel",
    "check_name",
    "encode_data",
]

MAX_NAME_LENGTH = 200
MAX_DATA_BYTES = 64 * 1024
DEFAULT_CHANNEL = "default"
# CR, LF and NUL end or corrupt an SSE line; ':' starts a comment/field separator.
# https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
_FORBIDDEN_IN_NAMES = frozenset("\r\n\x00:")


def check_name(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid event type or source name, else raise.

    Args:
        kind: "type" or "source", used in the error message.
        value: the candidate name.
    """
    if not isinstance(value, str):
        raise InvalidEvent(f"{kind} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidEvent(f"{kind} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidEvent(
            f"{kind} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if not _FORBIDDEN_IN_NAMES.isdisjoint(value):
        raise InvalidEvent(f"{kind} {value[:40]!r} contains CR, LF, NUL or ':'")
    return value


def check_channel(value: object) -> str:
    """Return ``value`` if it is a valid channel name, else raise ``InvalidEvent``.

    A channel follows the rules of a type (1 to 200 characters, no CR, LF, NUL or
    ':') and is made of dot-separated segments, none empty (``user.42.jobs``). ``*``
    is reserved for subscription patterns (``user.42.*``, ``*``).
    """
    check_name("channel", value)
    assert isinstance(value, str)
    if "*" in value:
        raise InvalidEvent(f"channel {value[:40]!r} contains '*' (only patterns may)")
    if "" in value.split("."):
        raise InvalidEvent(
            f"channel {value[:40]!r} has an empty segment (leading, trailing or '..')"
        )
    return value


def encode_data(data: Mapping[str, Any]) -> bytes:
    """Encode event data as compact JSON, enforcing the object and size rules."""
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"data must be a JSON object, not {type(data).__name__}")
    try:
        encoded = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidEvent(f"data is not JSON-serialisable: {exc}") from None
    if len(encoded) > MAX_DATA_BYTES:
        raise InvalidEvent(f"data is {len(encoded)} bytes encoded; the limit is {MAX_DATA_BYTES}")
    # orjson returns its whole output buffer (about 4 KiB however short the JSON):
    # held for a window by 100,000 pending events that is 400 MB, so keep an
    # exact-size copy (~0.3 µs). https://github.com/ijl/orjson/issues/483
    return bytes(memoryview(encoded))


@dataclass(frozen=True, slots=True)
class Event:
    """One event as a worker emitted it, or a batch event the aggregator made.

    Attributes:
        type: what happened, e.g. ``JOB_STARTED``.
        source: the worker that emitted it.
        data: a JSON object; the batcher takes ownership (do not mutate it after emit).
        ts: Unix time in seconds when it was emitted.
        uid: an optional client-chosen idempotency key (remote publishers set it).
        channel: where it is delivered (``user.42.jobs``); subscribers ask for
            channel patterns and a batch never holds two channels.
    """

    type: str
    source: str
    data: Mapping[str, Any]
    ts: float = field(default_factory=time.time)
    uid: str | None = None
    channel: str = DEFAULT_CHANNEL

    @classmethod
    def create(
        cls,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str,
        ts: float | None = None,
        uid: str | None = None,
        channel: str = DEFAULT_CHANNEL,
    ) -> Event:
        """Build a fully validated event (names, channel, JSON object, 64 KiB limit)."""
        event = cls(
            type=check_name("type", type),
            source=check_name("source", source),
            data={} if data is None else data,
            ts=time.time() if ts is None else float(ts),
            uid=uid,
            channel=check_channel(channel),
        )
        encode_data(event.data)
        return event


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event on its way to the journal: data encoded once.

    Attributes:
        event: the event (possibly a batch event).
        data_json: ``event.data`` encoded as compact JSON.
        persist: False for stream-only events: delivered live, never stored.
        uids: idempotency keys of every member (for de-duplication after restart).
        members: how many emitted events this one carries (1, or the batch count).
        emitted_at: monotonic time of the first member's emit (for queue latency).
    """

    event: Event
    data_json: bytes
    persist: bool = True
    uids: tuple[str, ...] = ()
    members: int = 1
    emitted_at: float = 0.0


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A totally ordered place in a journal: (rowid, 0) in SQLite, (ms, seq) in Redis."""

    major: int
    minor: int = 0


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the journal stored (or, for stream-only events, passed) it.

    Attributes:
        id: the wire id (SSE ``id:``, ``Last-Event-ID``), None for stream-only events.
        position: the comparable form of ``id``; None for stream-only events.
        event: the event.
        data_json: its data, encoded once.
    """

    id: str | None
    position: Position | None
    event: Event
    data_json: bytes

    def envelope_json(self) -> bytes:
        """``{"id", "type", "source", "channel", "ts", "data"}`` as one line of JSON bytes."""
        event = self.event
        head = orjson.dumps(
            {
                "id": self.id,
                "type": event.type,
                "source": event.source,
                "channel": event.channel,
                "ts": event.ts,
            }
        )
        return head[:-1] + b',"data":' + self.data_json + b"}"

    def sse_message(self) -> bytes:
        """The complete SSE message: ``id:`` (durable only), ``event:``, ``data:``, blank line."""
        id_line = b"" if self.id is None else b"id: " + self.id.encode() + b"\n"
        return (
            id_line
            + b"event: "
            + self.event.type.encode()
            + b"\ndata: "
            + self.envelope_json()
            + b"\n\n"
        )
