"""The hub: fan-out of journal events to SSE subscribers, with lossless resume.

The hub tails the journal (it never talks to the batcher) and hands every stored
event to each matching subscriber. Each event is encoded once
(``StoredEvent.sse_message()``), and the messages of one journal write are joined
once per filter: the same bytes go to every subscriber with that filter.

A push stream (``attach``, what ``GET /events`` uses) that is live and idle gets
those bytes written into its ASGI ``send`` from the hub's own loop iteration; any
other stream gets them in its bounded buffer, taken as one chunk by its task (see
``_subscriber``). Connecting with a cursor replays the journal first (``_replay``).

A buffer that overflows while live ends the stream (``slow_disconnects``): the
client reconnects with its last id and resumes from the journal, so a slow reader
never holds back the others or grows memory without bound.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskStatus

from sse_batcher._exceptions import BatcherClosed, ConfigError, QueueFull
from sse_batcher._lifecycle import Resource
from sse_batcher.batching._events import StoredEvent
from sse_batcher.batching._journal import Journal
from sse_batcher.batching._rules import batch_type_for
from sse_batcher.service._channels import ALL_CHANNELS, ChannelIndex, check_pattern, normalize
from sse_batcher.service._replay import OnReset, catch_up
from sse_batcher.service._subscriber import (
    HEARTBEAT_MESSAGE,
    FilterKey,
    Item,
    Send,
    Subscriber,
)

__all__ = ["HEARTBEAT_MESSAGE", "Hub", "OnReset", "batch_types_for"]

logger = logging.getLogger("sse_batcher.hub")


def batch_types_for(types: Iterable[str]) -> frozenset[str]:
    """The types a ``?types=`` filter matches: the types and their default batch types."""
    wanted = set(types)
    return frozenset(wanted | {batch_type_for(t) for t in wanted})


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
        self._groups: dict[FilterKey, set[Subscriber]] = {}
        self._index: ChannelIndex[FilterKey] = ChannelIndex()
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
                sub.interrupt()

    async def _heartbeats(self) -> None:
        """One timer for every subscriber: a ``:`` line for the idle ones.

        A stream is idle when nothing was sent for ``heartbeat`` seconds; it gets
        its ``:`` line within 1.5 times ``heartbeat`` of its last message. A ready
        push stream gets it written from here; a pull stream is marked and woken.
        """
        interval = self._heartbeat / 2
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            idle_since = now - self._heartbeat
            for group in list(self._groups.values()):
                for sub in tuple(group):
                    if sub.items or sub.last_sent > idle_since:
                        continue
                    if sub.ready:
                        sub.write(HEARTBEAT_MESSAGE, now)
                    elif sub.send is None:
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
        """Hand one appended batch to every matching subscriber (sync, never blocks).

        Costs O(groups that match) per event, not O(subscribers): the channel index
        yields only the groups whose patterns match the event's channel, and each
        message is encoded once, and only when some subscriber takes it. A group's
        messages are joined once and written as is to each of its ready streams.
        """
        if not batch:
            return
        self._counters["events_in"] += len(batch)
        if not self._count:
            return
        match = self._index.match
        pending: dict[FilterKey, list[Item]] = {}
        for stored in batch:
            event = stored.event
            keys = match(event.channel)
            if not keys:
                continue
            item: Item | None = None
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
        now = time.monotonic()
        groups = self._groups
        for key, items in pending.items():
            group = groups.get(key)
            if group is None:
                continue
            chunk = items[0][1] if len(items) == 1 else b"".join(m for _, m in items)
            self._counters["messages_queued"] += len(items) * len(group)
            for sub in tuple(group):
                if sub.ready:
                    if sub.floor is None:
                        sub.write(chunk, now)
                    else:  # just caught up: skip what the replay sent
                        kept = sub.after_floor(items)
                        if kept:
                            sub.write(b"".join(kept), now)
                else:
                    self._offer(sub, items)

    def _offer(self, sub: Subscriber, items: list[Item]) -> None:
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
                sub.interrupt()
                return
        sub.items.extend(items)
        sub.wake()

    def _remove(self, sub: Subscriber) -> None:
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
        async with self.attach(
            None,
            after_cursor=after_cursor,
            types=types,
            sources=sources,
            channels=channels,
            on_reset=on_reset,
        ) as sub:
            stream = sub.pull(self.catch_up(sub, after_cursor, on_reset))
            try:
                yield stream
            finally:
                self._remove(sub)
                with anyio.move_on_after(1.0, shield=True):
                    await stream.aclose()

    @asynccontextmanager
    async def attach(
        self,
        send: Send | None,
        *,
        after_cursor: str | None = None,
        types: Iterable[str] | None = None,
        sources: Iterable[str] | None = None,
        channels: Iterable[str] | None = None,
        on_reset: OnReset = "live",
    ) -> AsyncIterator[Subscriber]:
        """Register a subscriber (push when ``send`` is given); leaving unregisters it.

        The caller drives it: ``catch_up`` first, then, for a push stream, sets
        ``ready`` whenever it has nothing pending so the hub writes to ``send``
        directly (see ``EventStream``). Arguments and errors as ``subscribe``.
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
        key: FilterKey = (
            None if types is None else batch_types_for(types),
            None if sources is None else frozenset(sources),
            patterns,
        )
        sub = Subscriber(key, replaying=after_cursor is not None, send=send)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = set()
            self._index.add(patterns, key)
        group.add(sub)
        self._count += 1
        self._counters["subscribed_total"] += 1
        try:
            yield sub
        finally:
            sub.ready = False
            self._remove(sub)
            if sub.pending is not None:
                sub.pending.close()
                sub.pending = None

    def catch_up(
        self, sub: Subscriber, cursor: str | None, on_reset: OnReset
    ) -> AsyncGenerator[bytes, None]:
        """The reset notice and replayed chunks a new stream sends before going live."""
        return catch_up(self._journal, sub, cursor, on_reset, self._counters)

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
