"""The hub: fan-out of journal events to SSE subscribers, with lossless resume.

The hub tails the journal (it never talks to the batcher) and hands every stored
event to each matching subscriber's bounded buffer. Each event is encoded once
(``StoredEvent.sse_message()``) and the same bytes go to every subscriber; a
subscriber's pending messages are joined into one chunk, so a burst costs one
socket write.

Connect with a cursor (``Last-Event-ID``)::

    register (buffering live) ──► journal.resume(cursor) ──► reset? ──► event: reset
            │                            │
            │                            ▼
            │                   read_after(last, 500) … until a short page
            │                   with no buffer overflow since that read began
            ▼                            │
    live buffer  ──── drop position ≤ last replayed ────► live

A live buffer that overflows while replaying is discarded and the replay goes on
(every durable event is in the journal). One that overflows when live ends the
stream (``slow_disconnects``): the client reconnects with its last id and
resumes from the journal, so a slow reader never holds back the others or grows
memory without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import orjson
from anyio.abc import TaskStatus

from sse_batcher._exceptions import BatcherClosed, ConfigError, InvalidCursor, QueueFull
from sse_batcher._lifecycle import Resource
from sse_batcher.batching._events import Event, Position, StoredEvent
from sse_batcher.batching._journal import Journal, Resume
from sse_batcher.batching._rules import batch_type_for
from sse_batcher.service._channels import (
    ALL_CHANNELS,
    ChannelFilter,
    ChannelIndex,
    check_pattern,
    normalize,
)

__all__ = ["Hub", "OnReset", "batch_types_for"]

logger = logging.getLogger("sse_batcher.hub")

OnReset = Literal["live", "oldest"]
REPLAY_PAGE = 500
HEARTBEAT_MESSAGE = b":\n\n"
_Item = tuple[Position | None, bytes]
# (types, sources, channel patterns): subscribers with equal filters share one group,
# and the channel index finds the groups an event's channel concerns.
_FilterKey = tuple[frozenset[str] | None, frozenset[str] | None, frozenset[str]]


def batch_types_for(types: Iterable[str]) -> frozenset[str]:
    """The types a ``?types=`` filter matches: the types and their default batch types."""
    wanted = set(types)
    return frozenset(wanted | {batch_type_for(t) for t in wanted})


class _Subscriber:
    """One open stream: its filter, bounded buffer and hand-off state."""

    __slots__ = (
        "channels",
        "clears",
        "ended",
        "floor",
        "heartbeat_due",
        "items",
        "key",
        "last_sent",
        "replaying",
        "slow",
        "waiter",
    )

    def __init__(self, key: _FilterKey, *, replaying: bool) -> None:
        self.key = key
        self.channels = ChannelFilter(key[2])
        self.items: list[_Item] = []
        self.replaying = replaying  # overflow discards the buffer instead of disconnecting
        self.clears = 0  # buffer discards while replaying: the replay must read again
        self.floor: Position | None = None  # drop live items at or below (already replayed)
        # One reusable event per subscriber, plain asyncio (the service runs on
        # asyncio): a fresh anyio.Event and a cancel scope per wait cost ~20-40 µs
        # per subscriber per message, which is most of a 1,000-subscriber fan-out.
        self.waiter = asyncio.Event()
        self.last_sent = time.monotonic()
        self.heartbeat_due = False  # set by the hub's heartbeat task when idle
        self.ended = False  # hub closing or tail restarted: finish what is buffered, then end
        self.slow = False  # disconnected for overflowing its buffer

    def matches(self, event: Event) -> bool:
        types, sources, _ = self.key
        return (
            (types is None or event.type in types)
            and (sources is None or event.source in sources)
            and self.channels(event.channel)
        )

    def wake(self) -> None:
        self.waiter.set()


class _OnceStatus:
    """A task status that forwards only the first ``started()`` (the tail is restarted)."""

    def __init__(self, outer: TaskStatus[None]) -> None:
        self._outer = outer
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self._outer.started()


class Hub(Resource):
    """Fans journal events out to SSE subscribers; an async context manager.

    Args:
        journal: the (open) journal to tail and replay from.
        buffer_size: messages a subscriber may have pending before it is disconnected.
        heartbeat: seconds of silence after which a ``:`` comment line is sent.
        max_subscribers: open streams allowed at once; ``subscribe`` raises
            ``QueueFull`` beyond it.
    """

    def __init__(
        self,
        journal: Journal,
        *,
        buffer_size: int = 1000,
        heartbeat: float = 15.0,
        max_subscribers: int = 10_000,
    ) -> None:
        if buffer_size < 1:
            raise ConfigError(f"buffer_size must be at least 1, not {buffer_size}")
        if not heartbeat > 0:
            raise ConfigError(f"heartbeat must be a positive number of seconds, not {heartbeat}")
        if max_subscribers < 1:
            raise ConfigError(f"max_subscribers must be at least 1, not {max_subscribers}")
        self._journal = journal
        self._buffer_size = buffer_size
        self._heartbeat = heartbeat
        self._max_subscribers = max_subscribers
        # Subscribers grouped by filter: each event is filtered once per distinct filter,
        # and only for the filters whose channel patterns match it (the index).
        self._groups: dict[_FilterKey, set[_Subscriber]] = {}
        self._index: ChannelIndex[_FilterKey] = ChannelIndex()
        self._count = 0
        self._closing = False
        self._counters = dict.fromkeys(
            (
                "subscribed_total",
                "refused_total",
                "slow_disconnects",
                "replays",
                "replay_overflows",
                "resets",
                "events_in",
                "messages_queued",
                "tail_restarts",
            ),
            0,
        )

    # -- lifecycle ------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            await tg.start(self._tail)
            tg.start_soon(self._heartbeats)
            try:
                yield
            finally:
                self._closing = True  # subscribe() refuses from here on
                self.close_streams()
                tg.cancel_scope.cancel()

    def close_streams(self) -> None:
        """End every open stream after what it has buffered (server shutdown)."""
        for group in self._groups.values():
            for sub in group:
                sub.ended = True
                sub.wake()

    async def _heartbeats(self) -> None:
        """One timer for every subscriber: mark the idle ones and wake them.

        A stream is idle when nothing was sent for ``heartbeat`` seconds; it gets
        its ``:`` line within 1.5 times ``heartbeat`` of its last message.
        """
        interval = self._heartbeat / 2
        while True:
            await anyio.sleep(interval)
            idle_since = time.monotonic() - self._heartbeat
            for group in self._groups.values():
                for sub in group:
                    if not sub.items and sub.last_sent <= idle_since:
                        sub.heartbeat_due = True
                        sub.wake()

    async def _tail(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        status = _OnceStatus(task_status)
        delay = 0.1
        while True:
            try:
                await self._journal.run_tail(self._deliver, task_status=status)
                return
            except Exception:
                if not status.done:
                    raise
                # Events may have been missed while the tail was down: end every stream
                # so clients reconnect with their last id and replay from the journal.
                logger.exception("journal tail failed; restarting in %.1f s", delay)
                self._counters["tail_restarts"] += 1
                self.close_streams()
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- fan-out --------------------------------------------------------------

    def _deliver(self, batch: Sequence[StoredEvent]) -> None:
        """Queue one appended batch for every matching subscriber (sync, never blocks).

        Costs O(groups that match) per event, not O(subscribers): the channel index
        yields only the groups whose patterns match the event's channel, and each
        message is encoded once, and only when some subscriber takes it.
        """
        if not batch:
            return
        self._counters["events_in"] += len(batch)
        if not self._count:
            return
        match = self._index.match
        pending: dict[_FilterKey, list[_Item]] = {}
        for stored in batch:
            event = stored.event
            keys = match(event.channel)
            if not keys:
                continue
            item: _Item | None = None
            for key in keys:
                types, sources, _ = key
                if (types is not None and event.type not in types) or (
                    sources is not None and event.source not in sources
                ):
                    continue
                if item is None:
                    item = (stored.position, stored.sse_message())
                items = pending.get(key)
                if items is None:
                    pending[key] = [item]
                else:
                    items.append(item)
        groups = self._groups
        for key, items in pending.items():
            group = groups.get(key)
            if group is not None:
                for sub in tuple(group):
                    self._offer(sub, items)

    def _offer(self, sub: _Subscriber, items: list[_Item]) -> None:
        # Slow means "still holding unsent messages when new ones would pass the
        # bound". A subscriber that has taken everything accepts one journal write
        # whatever its size (group commit makes writes large under load), so memory
        # stays bounded by buffer_size plus one write, and fast readers are never
        # dropped for the size of a burst.
        if sub.items and len(sub.items) + len(items) > self._buffer_size:
            if sub.replaying:
                # Durable events are all in the journal: drop the buffer, read again.
                sub.items = []
                sub.clears += 1
                self._counters["replay_overflows"] += 1
                items = items[-self._buffer_size :]
            else:
                sub.items = []
                sub.slow = True
                self._counters["slow_disconnects"] += 1
                self._remove(sub)
                sub.wake()
                return
        sub.items.extend(items)
        self._counters["messages_queued"] += len(items)
        sub.wake()

    def _remove(self, sub: _Subscriber) -> None:
        group = self._groups.get(sub.key)
        if group is not None and sub in group:
            group.discard(sub)
            self._count -= 1
            if not group:
                del self._groups[sub.key]
                self._index.remove(sub.key[2], sub.key)

    # -- subscribing ----------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        """Streams open right now."""
        return self._count

    @asynccontextmanager
    async def subscribe(
        self,
        *,
        after_cursor: str | None = None,
        types: Iterable[str] | None = None,
        sources: Iterable[str] | None = None,
        channels: Iterable[str] | None = None,
        on_reset: OnReset = "live",
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open a stream of SSE byte chunks; leaving the block unregisters it.

        The subscriber is registered (and buffering live events) when the block is
        entered. Iterating first replays the journal after ``after_cursor`` (if
        given), then continues live with no gap and no duplicate. The iterator
        ends when the subscriber overflows its buffer or the hub closes.

        Args:
            after_cursor: the client's last event id (``Last-Event-ID``); None: live only.
            types: event types to deliver (their batch types match too); None: all.
            sources: sources to deliver; None: all.
            channels: channel patterns to deliver (``user.42``, ``user.42.*``,
                ``*``); None: every channel. The caller checks them against the
                subscriber's permissions; the hub only matches.
            on_reset: where to continue when the cursor cannot be served: from the
                oldest available event, or live.

        Raises:
            QueueFull: ``max_subscribers`` streams are already open.
            BatcherClosed: the hub is not open.
        """
        if self._closing:
            raise BatcherClosed("the hub is closing")
        self._require_open()
        if on_reset not in ("live", "oldest"):
            raise ConfigError(f"on_reset must be 'live' or 'oldest', not {on_reset!r}")
        if self._count >= self._max_subscribers:
            self._counters["refused_total"] += 1
            raise QueueFull(f"{self._count} subscribers are connected; the limit is reached")
        patterns = ALL_CHANNELS if channels is None else normalize(map(check_pattern, channels))
        if not patterns:
            raise ConfigError("channels must name at least one pattern (use '*' for every one)")
        key: _FilterKey = (
            None if types is None else batch_types_for(types),
            None if sources is None else frozenset(sources),
            patterns,
        )
        sub = _Subscriber(key, replaying=after_cursor is not None)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = set()
            self._index.add(patterns, key)
        group.add(sub)
        self._count += 1
        self._counters["subscribed_total"] += 1
        stream = self._stream(sub, after_cursor, on_reset)
        try:
            yield stream
        finally:
            self._remove(sub)
            with anyio.move_on_after(1.0, shield=True):
                await stream.aclose()

    async def _stream(
        self, sub: _Subscriber, cursor: str | None, on_reset: OnReset
    ) -> AsyncGenerator[bytes, None]:
        if cursor is not None:
            after, reset = await self._start_after(cursor)
            if reset is not None:
                reset["continue"] = on_reset
                yield b"event: reset\ndata: " + orjson.dumps(reset) + b"\n\n"
            if reset is None or on_reset == "oldest":
                self._counters["replays"] += 1
                async for chunk in self._replay(sub, after):
                    yield chunk
        sub.replaying = False
        waiter = sub.waiter
        while True:
            if sub.items:
                chunk = self._take(sub)
                if chunk:
                    sub.last_sent = time.monotonic()
                    yield chunk
                continue
            if sub.ended or sub.slow:
                return
            if sub.heartbeat_due:
                sub.heartbeat_due = False
                sub.last_sent = time.monotonic()
                yield HEARTBEAT_MESSAGE
                continue
            # No await between the checks above and this wait, and every waker runs
            # on this loop: a wake cannot fall between them and be lost.
            waiter.clear()
            await waiter.wait()

    async def _start_after(self, cursor: str) -> tuple[Position | None, dict[str, Any] | None]:
        """Where to replay from, and why not (reset details) when the cursor is not served."""
        try:
            resume = await self._journal.resume(cursor)
        except InvalidCursor:
            oldest = await self._journal.read_after(None, 1)
            resume = Resume(None, reset="invalid", oldest_id=oldest[0].id if oldest else None)
        if resume.reset is None:
            return resume.after, None
        self._counters["resets"] += 1
        return None, {
            "reason": resume.reset,
            "last_event_id": cursor[:200],
            "oldest_id": resume.oldest_id,
        }

    async def _replay(
        self, sub: _Subscriber, after: Position | None
    ) -> AsyncGenerator[bytes, None]:
        last = after
        while True:
            clears = sub.clears
            rows = await self._journal.read_after(last, REPLAY_PAGE)
            if rows:
                last = rows[-1].position
            messages = [row.sse_message() for row in rows if sub.matches(row.event)]
            # Caught up: a short page, and no live event was discarded since this read
            # began (anything newer than the read is in the buffer). Switch atomically.
            if len(rows) < REPLAY_PAGE and sub.clears == clears:
                sub.replaying = False
                sub.floor = last
                if messages:
                    yield b"".join(messages)
                return
            if messages:
                yield b"".join(messages)

    @staticmethod
    def _take(sub: _Subscriber) -> bytes:
        """Everything buffered as one chunk, minus what the replay already sent."""
        items, sub.items = sub.items, []
        floor = sub.floor
        if floor is None:
            if len(items) == 1:
                return items[0][1]
            return b"".join(message for _, message in items)
        kept: list[bytes] = []
        for position, message in items:
            if position is not None and floor is not None:
                if position <= floor:
                    continue
                floor = None  # the tail is ordered: everything after this is new
            kept.append(message)
        sub.floor = floor
        return b"".join(kept)

    # -- stats ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for ``/stats`` and ``/metrics`` (flat numbers)."""
        buffered = sum(len(s.items) for group in self._groups.values() for s in group)
        return {
            "subscribers": self._count,
            "max_subscribers": self._max_subscribers,
            "subscriber_filters": len(self._groups),
            "buffered_messages": buffered,
            **self._counters,
        }
