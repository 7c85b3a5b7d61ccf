"""HTTP ingest: read a bounded body, accept its shapes, validate each entry, de-duplicate.

A body is one event object, a JSON array of them, or ``{"events": [...]}``. Every
entry is validated on its own with :meth:`Event.create`; the invalid ones are
reported by index and the rest go on. An entry's ``uid`` (a client-chosen
idempotency key) seen within ``uid_ttl`` seconds is acknowledged and not stored
again, so a publisher may retry a request whose answer it never got.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from sse_batcher._exceptions import BatcherClosed, InvalidEvent, JournalError, QueueFull
from sse_batcher.batching._events import DEFAULT_CHANNEL, Event
from sse_batcher.batching._journal import Journal
from sse_batcher.service._auth import AuthGate, Grant

if TYPE_CHECKING:
    from sse_batcher.batching._batcher import SSEEventBatcher

__all__ = ["Ingest", "ParsedBatch", "UidCache", "parse_body", "read_body"]

logger = logging.getLogger("sse_batcher.ingest")

MAX_UID_LENGTH = 200
_FIELDS = frozenset({"type", "source", "channel", "data", "ts", "uid"})
_SHAPE_ERROR = 'the body must be an event object, an array of events or {"events": [...]}'


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None (answer 413) as soon as Content-Length or the bytes
    received pass ``limit``: the rest is never read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class ParsedBatch:
    """The valid events of a body (with their indexes) and the rejected entries."""

    __slots__ = ("events", "rejected")

    def __init__(self) -> None:
        self.events: list[tuple[int, Event]] = []
        self.rejected: list[dict[str, Any]] = []


def parse_body(body: bytes) -> ParsedBatch:
    """Parse and validate an ingest body entry by entry.

    Raises:
        ValueError: the body is not JSON, or not one of the accepted shapes
            (the message is sent back with a 400).
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from None
    entries: list[Any]
    if isinstance(document, list):
        entries = document
    elif isinstance(document, dict) and "events" in document:
        if set(document) != {"events"} or not isinstance(document["events"], list):
            raise ValueError(_SHAPE_ERROR)
        entries = document["events"]
    elif isinstance(document, dict):
        entries = [document]
    else:
        raise ValueError(_SHAPE_ERROR)
    batch = ParsedBatch()
    for index, entry in enumerate(entries):
        try:
            batch.events.append((index, _entry_event(entry)))
        except InvalidEvent as exc:
            batch.rejected.append({"index": index, "error": str(exc)})
    return batch


def _entry_event(entry: Any) -> Event:
    if not isinstance(entry, dict):
        raise InvalidEvent(f"an event must be a JSON object, not {_json_kind(entry)}")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise InvalidEvent(f"unknown field(s): {', '.join(sorted(unknown)[:5])}")
    for name in ("type", "source"):
        if name not in entry:
            raise InvalidEvent(f"{name} is required")
    ts = entry.get("ts")
    if ts is not None and (
        isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)
    ):
        raise InvalidEvent("ts must be a number (Unix time in seconds)")
    uid = entry.get("uid")
    if uid is not None and (not isinstance(uid, str) or not 0 < len(uid) <= MAX_UID_LENGTH):
        raise InvalidEvent(f"uid must be a string of 1 to {MAX_UID_LENGTH} characters")
    data = entry.get("data")
    if data is not None and not isinstance(data, dict):
        raise InvalidEvent(f"data must be a JSON object, not {_json_kind(data)}")
    return Event.create(
        entry["type"],
        data,
        source=entry["source"],
        ts=ts,
        uid=uid,
        channel=entry.get("channel", DEFAULT_CHANNEL),
    )


def _forbid_channels(batch: ParsedBatch, grant: Grant) -> None:
    """Move the entries on channels ``grant`` may not publish to into ``rejected``,
    each with status 403; the others are stored as usual."""
    kept = []
    for index, event in batch.events:
        if grant.allows("publish", event.channel):
            kept.append((index, event))
        else:
            batch.rejected.append(
                {
                    "index": index,
                    "status": 403,
                    "error": f"this token may not publish to channel {event.channel!r}",
                }
            )
    batch.events = kept
    batch.rejected.sort(key=lambda entry: int(entry["index"]))


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
    }.get(type(value), type(value).__name__)


class UidCache:
    """Idempotency keys seen in the last ``ttl`` seconds (bounded; oldest evicted first).

    Args:
        ttl: seconds a uid is remembered; 0 disables de-duplication.
        max_entries: bound on remembered uids.
        clock: monotonic time source.
    """

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._expiry: dict[str, float] = {}  # insertion order = expiry order (one ttl)

    def __len__(self) -> int:
        return len(self._expiry)

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    def seed(self, uids: Iterable[str]) -> None:
        """Remember uids the journal stored recently (at startup)."""
        for uid in uids:
            self.add(uid)

    def seen(self, uid: str) -> bool:
        """Whether ``uid`` was added within the ttl."""
        self._purge()
        return uid in self._expiry

    def add(self, uid: str) -> None:
        if not self.enabled or uid in self._expiry:
            return
        self._expiry[uid] = self._clock() + self._ttl
        if len(self._expiry) > self._max:
            del self._expiry[next(iter(self._expiry))]

    def discard(self, uid: str) -> None:
        self._expiry.pop(uid, None)

    def _purge(self) -> None:
        now = self._clock()
        expiry = self._expiry
        while expiry:
            uid = next(iter(expiry))
            if expiry[uid] > now:
                return
            del expiry[uid]


def _json(content: Any, status_code: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


class Ingest:
    """``POST /events``: parse, validate, de-duplicate and hand events to the batcher.

    Args:
        batcher: receives the valid events (``offer``, all or nothing).
        gate: decides whether the request may publish.
        max_body_bytes: larger bodies get 413.
        durable: answer only once the events are committed (``offer_durably``).
        uid_ttl: seconds a uid is remembered (0: no de-duplication).
    """

    def __init__(
        self,
        batcher: SSEEventBatcher,
        gate: AuthGate,
        *,
        max_body_bytes: int,
        durable: bool,
        uid_ttl: float,
    ) -> None:
        self._batcher = batcher
        self._gate = gate
        self._limit = max_body_bytes
        self._durable = durable
        self._uid_ttl = uid_ttl
        self.uids = UidCache(uid_ttl)
        self._counters = dict.fromkeys(
            (
                "requests",
                "accepted",
                "rejected",
                "duplicates",
                "too_large",
                "unparseable",
                "queue_full",
                "unauthorized",
            ),
            0,
        )

    async def seed_uids(self, journal: Journal) -> None:
        """Remember the uids the journal stored within the ttl (restart de-duplication)."""
        if not self.uids.enabled:
            return
        try:
            self.uids.seed(await journal.recent_uids(self._uid_ttl))
        except JournalError as exc:
            logger.warning("could not load recent uids; duplicates may be stored: %s", exc)

    def stats(self) -> dict[str, Any]:
        return {**self._counters, "uids_remembered": len(self.uids)}

    async def handle(self, request: Request) -> Response:
        self._counters["requests"] += 1
        grant = self._gate.require(request, "publish")
        if isinstance(grant, Response):
            self._counters["unauthorized"] += 1
            return grant
        body = await read_body(request, self._limit)
        if body is None:
            self._counters["too_large"] += 1
            return _json({"error": f"the body is larger than {self._limit} bytes"}, 413)
        try:
            batch = parse_body(body)
        except ValueError as exc:
            self._counters["unparseable"] += 1
            return _json({"error": str(exc)}, 400)
        if "*" not in grant.publish:
            _forbid_channels(batch, grant)
        events, duplicates, fresh = self._deduplicate(batch)
        if events:
            refused = await self._offer(events)
            if refused is not None:
                for uid in fresh:
                    self.uids.discard(uid)  # not queued: a retry must be accepted
                return refused
        self._counters["accepted"] += len(events)
        self._counters["rejected"] += len(batch.rejected)
        self._counters["duplicates"] += duplicates
        return _json(
            {"accepted": len(events), "rejected": batch.rejected, "duplicates": duplicates}, 202
        )

    def _deduplicate(self, batch: ParsedBatch) -> tuple[list[Event], int, list[str]]:
        events: list[Event] = []
        fresh: list[str] = []
        duplicates = 0
        for _, event in batch.events:
            uid = event.uid
            if uid is not None and self.uids.enabled:
                if self.uids.seen(uid):
                    duplicates += 1
                    continue
                # Remembered now, before any await: a concurrent retry is a duplicate.
                self.uids.add(uid)
                fresh.append(uid)
            events.append(event)
        return events, duplicates, fresh

    async def _offer(self, events: list[Event]) -> Response | None:
        retry = {"Retry-After": "1"}
        try:
            if self._durable:
                await self._batcher.offer_durably(events)
            else:
                self._batcher.offer(events)
        except QueueFull:
            self._counters["queue_full"] += 1
            return _json({"error": "the queue is full; retry later"}, 503, retry)
        except BatcherClosed:
            return _json({"error": "the service is shutting down"}, 503, retry)
        except JournalError as exc:
            # Durable ingest only: the events were queued and dead-lettered; they will be
            # written later, so their uids stay remembered and a retry is a duplicate.
            self._counters["accepted"] += len(events)
            return _json({"error": f"not yet durable: {exc}"}, 503, retry)
        return None
