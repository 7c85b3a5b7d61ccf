"""SSEEventBatcher: takes events from any thread, groups them, writes each batch once.

    emit() (any thread) ──lock──► Inbox ──wake once per cycle──► Assembler task
        Aggregator: open groups, windows, size, immediate, per-entity order
    Assembler ──ready events──► JournalWriter task
        Journal.append (one transaction for everything queued), retry with backoff,
        dead-letter after the budget; then sinks; progress reported to the Inbox,
        where WriteWaiters (flush, durable ingest, close) wait.

The path runs one way: each part is given the parts below it (the inbox, the source
table, the aggregator, the writer), never a method of the batcher.

``emit`` costs a lock, a tuple and a deque append: no encoding, no I/O, and at most
one cross-thread wake-up per assembler cycle, because waking the loop costs ~14 µs
(a self-pipe write) while the append costs ~0.3 µs.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from os import PathLike
from typing import Any

import anyio

from sse_batcher._exceptions import (
    BatcherClosed,
    ConfigError,
    InvalidEvent,
    JournalUnavailable,
    QueueFull,
)
from sse_batcher._lifecycle import Resource
from sse_batcher.batching._aggregation import Aggregator
from sse_batcher.batching._assembler import Assembler
from sse_batcher.batching._events import DEFAULT_CHANNEL, Event, check_channel, check_name
from sse_batcher.batching._inbox import Inbox, Overflow
from sse_batcher.batching._journal import Journal
from sse_batcher.batching._rules import AggregationRule, Flush, RuleSet
from sse_batcher.batching._sink import Sink
from sse_batcher.batching._sources import SourceTable
from sse_batcher.batching._stats import BatcherStats, WorkerInfo
from sse_batcher.batching._waiters import WriteWaiters
from sse_batcher.batching._writer import JournalWriter

__all__ = ["Overflow", "SSEEventBatcher"]

_OVERFLOWS = ("block", "reject", "drop_oldest")
_NAME_CACHE_LIMIT = 4096
_Fields = tuple[str, str, Mapping[str, Any], float | None, str | None, str]


def _copy_data(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """A shallow copy, so the caller may reuse its dict once emit returns."""
    if data.__class__ is dict:
        return data.copy()
    if data is None:
        return {}
    if isinstance(data, Mapping):
        return dict(data)
    raise InvalidEvent(f"data must be a JSON object, not {data.__class__.__name__}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, not {value!r}")


class SSEEventBatcher(Resource):
    """Groups similar events that arrive close together and journals each batch once.

    Use it as an async context manager on an asyncio event loop; the journal must
    already be open (``async with journal, SSEEventBatcher(journal) as batcher``).
    Leaving the block stops accepting events and writes what is pending within
    ``drain_timeout``; what could not be written goes to the dead-letter store.

    Args:
        journal: where batches become durable (``SQLiteJournal``, ``RedisJournal``).
        rules: aggregation rules; first match wins, then the default rule.
        window: seconds from a group's first event to its flush (0.01 to 60).
        max_batch: members at which a group flushes at once (1 to 10,000).
        max_pending_events: bound on events held (inbox, groups, write queue).
        max_pending_bytes: bound on encoded bytes held.
        overflow: what a full queue does: ``"block"`` (``aemit``/``offer`` wait up to
            ``block_timeout``; sync ``emit`` raises ``QueueFull``), ``"reject"``
            (raise ``QueueFull``), ``"drop_oldest"`` (make room, counted).
        block_timeout: seconds ``aemit`` waits for room under ``"block"``.
        max_retries: journal retries per batch before it is dead-lettered.
        retry_delay: first retry delay in seconds; doubles each retry, with jitter.
        dead_letter_path: JSON-lines file for batches the journal refused; None
            keeps them in memory (still retried, lost at exit).
        drain_timeout: seconds closing may spend writing what is pending.
        sinks: secondary destinations fed after each append (e.g. ``ArchiveSink``).
        flush: ``"trailing"`` (a group waits its window) or ``"leading"`` (the first
            event after a quiet window goes out at once; the ones that follow it inside
            the window are merged). A rule's own ``flush`` wins.
        clock: monotonic clock (seconds) used for windows; injectable for tests.
    """

    def __init__(
        self,
        journal: Journal,
        *,
        rules: Sequence[AggregationRule] = (),
        window: float = 0.5,
        max_batch: int = 10,
        max_pending_events: int = 100_000,
        max_pending_bytes: int = 64 * 1024 * 1024,
        overflow: Overflow = "block",
        block_timeout: float = 5.0,
        max_retries: int = 2,
        retry_delay: float = 0.5,
        dead_letter_path: str | PathLike[str] | None = None,
        drain_timeout: float = 10.0,
        sinks: Sequence[Sink] = (),
        flush: Flush = "trailing",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_range("window", window, 0.01, 60)
        _check_range("max_batch", max_batch, 1, 10_000)
        _check_range("max_pending_events", max_pending_events, 1, 100_000_000)
        _check_range("max_pending_bytes", max_pending_bytes, 1024, 2**40)
        _check_range("block_timeout", block_timeout, 0, 3600)
        _check_range("max_retries", max_retries, 0, 100)
        _check_range("retry_delay", retry_delay, 0, 600)
        _check_range("drain_timeout", drain_timeout, 0, 3600)
        if overflow not in _OVERFLOWS:
            raise ConfigError(f"overflow must be one of {', '.join(_OVERFLOWS)}, not {overflow!r}")
        self.journal = journal
        self.window = float(window)
        self.max_batch = int(max_batch)
        self.overflow: Overflow = overflow
        self._drain_timeout = float(drain_timeout)
        # Names already validated (types and sources alike: the rules are the same).
        self._valid_names: set[str] = set()
        self._valid_channels: set[str] = set()
        self._closing = False
        # The data path, one way: inbox ──► assembler ──► writer; each part is given
        # the parts below it, never a method of this class.
        self._inbox = Inbox(
            max_events=int(max_pending_events),
            max_bytes=int(max_pending_bytes),
            overflow=overflow,
            block_timeout=float(block_timeout),
        )
        self._sources = SourceTable()
        self._aggregator = Aggregator(
            RuleSet(rules), window=self.window, max_batch=self.max_batch, flush=flush
        )
        self._writer = JournalWriter(
            journal,
            dead_letter_path=dead_letter_path,
            max_retries=int(max_retries),
            retry_delay=float(retry_delay),
            drain_timeout=self._drain_timeout,
            sinks=sinks,
            inbox=self._inbox,
            sources=self._sources,
        )
        self._assembler = Assembler(
            self._inbox, self._aggregator, self._writer, self._sources, clock=clock
        )
        self._waiters = WriteWaiters(self._inbox, self._aggregator, self._writer)

    # -- lifecycle -----------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between entering the context and the start of close."""
        return self.is_open and not self._closing

    @property
    def write_healthy(self) -> bool:
        """False from a failed journal append until the next successful one.

        /health reports it, because a journal can answer reads while every write fails.
        """
        return self._writer.healthy

    def _describe(self) -> str:
        return "the batcher"

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        # Unwound in reverse: the tasks end first, then what they left is
        # dead-lettered, then the writer's sinks drain and close.
        async with self._writer, AsyncExitStack() as stack:
            stack.push_async_callback(self._assembler.dead_letter_leftovers)
            async with anyio.create_task_group() as tg:
                await tg.start(self._writer.run)
                await tg.start(self._assembler.run)
                self._inbox.open()
                try:
                    yield
                finally:
                    await self._drain()
                    tg.cancel_scope.cancel()

    async def _drain(self) -> None:
        """Stop accepting events and write everything pending within ``drain_timeout``.

        Whatever could not be written in time goes to the dead-letter store and is
        reported in the log; nothing is dropped silently.
        """
        self._closing = True
        self._inbox.close()
        target = self._inbox.last_seq()
        self._assembler.request_flush("close")
        with anyio.move_on_after(self._drain_timeout, shield=True):
            await self._waiters.wait(target)

    # -- producing -----------------------------------------------------------------

    def emit(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str,
        uid: str | None = None,
        ts: float | None = None,
        channel: str = DEFAULT_CHANNEL,
    ) -> None:
        """Queue one event. Thread-safe; never blocks or does I/O.

        Type, source and channel are validated here (they would break SSE framing);
        data is encoded later, off the caller's path, and an event whose data cannot
        be encoded or exceeds 64 KiB is dropped there with reason ``invalid``.

        Raises:
            QueueFull: the queue is at its bound and the policy is not drop_oldest.
            BatcherClosed: the batcher is not running.
            InvalidEvent: a name (type, source, channel) is invalid, or data is no mapping.
        """
        # The hot path: every line here is paid per event (target: under 1 µs), so the
        # inbox's put is inlined here; a call costs ~100 ns.
        names, channels = self._valid_names, self._valid_channels
        if type not in names or source not in names or channel not in channels:
            self._check_names(type, source, channel)
        # A shallow copy (the caller may reuse its dict); inline for plain dicts.
        data = data.copy() if data.__class__ is dict else _copy_data(data)
        inbox = self._inbox
        # One clock call: ts (wall time) left None is derived from the monotonic
        # stamp when the inbox is drained, microseconds later.
        with inbox.lock:
            if not inbox.accepting:
                self._refuse()
            if inbox.pending >= inbox.max_events or inbox.pending_bytes >= inbox.max_bytes:
                inbox.make_room(1, True)
            seq = inbox.next_seq
            inbox.next_seq = seq + 1
            inbox.items.append((type, source, data, ts, uid, channel, time.monotonic(), seq))
            inbox.pending += 1
            if inbox.wake_scheduled:
                return
            inbox.wake_scheduled = True
        inbox.schedule_wake()

    async def aemit(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str,
        uid: str | None = None,
        ts: float | None = None,
        channel: str = DEFAULT_CHANNEL,
    ) -> None:
        """Queue one event; under the ``"block"`` policy wait for room (backpressure).

        From a thread other than the batcher's event loop this behaves as ``emit``.
        """
        names, channels = self._valid_names, self._valid_channels
        if type not in names or source not in names or channel not in channels:
            self._check_names(type, source, channel)
        fields = (type, source, _copy_data(data), time.time() if ts is None else ts, uid, channel)
        await self._put([fields], block=self._inbox.may_block())

    def offer(self, events: Sequence[Event]) -> None:
        """Queue validated events all or nothing (HTTP ingest answers 503 on QueueFull)."""
        items = self._fields_of(events)
        if items:
            self._put_now(items, count_rejects=True)

    async def offer_blocking(self, events: Sequence[Event]) -> None:
        """``offer``, waiting up to ``block_timeout`` for room under ``"block"``."""
        items = self._fields_of(events)
        if items:
            await self._put(items, block=self._inbox.may_block())

    async def offer_durably(self, events: Sequence[Event]) -> None:
        """``offer``, then return once every one of them is committed to the journal.

        Batching is unchanged: the call waits for the window like any other event.

        Raises:
            QueueFull: as ``offer``.
            JournalUnavailable: the journal refused them and they were dead-lettered
                (they will be re-appended later; a retry is de-duplicated by uid).
        """
        counts = self._writer.counts
        dead_before = counts.dead_lettered
        self.offer(events)
        await self._waiters.wait(self._inbox.last_seq())
        if counts.dead_lettered != dead_before:
            raise JournalUnavailable("the journal is failing; events were dead-lettered")

    async def flush(self) -> None:
        """Seal every open group now and return once everything emitted before the
        call is written (or dead-lettered)."""
        self._require_open()
        target = self._inbox.last_seq()
        self._assembler.request_flush("flush")
        await self._waiters.wait(target)

    # -- workers -------------------------------------------------------------------

    def set_batching(self, source: str, enabled: bool) -> None:
        """Switch batching for one source; with it off its events go out one by one."""
        check_name("source", source)
        self._sources.set_batching(source, enabled)

    def batching_enabled(self, source: str) -> bool:
        """Whether events from ``source`` are batched."""
        return self._sources.batching(source)

    def workers(self) -> list[WorkerInfo]:
        """Every source seen (or configured), sorted by name."""
        return self._sources.infos()

    def stats(self) -> BatcherStats:
        """A consistent-enough snapshot of every counter (cheap; no locks held long)."""
        c = self._writer.counts
        assembled = self._assembler.counts
        inbox = self._inbox
        with inbox.lock:
            events_in, depth = inbox.next_seq - 1, inbox.pending
            dropped = {
                "queue_full": inbox.counts.rejected,
                "drop_oldest": inbox.counts.dropped_oldest + assembled.shed,
            }
        dropped["invalid"] = assembled.invalid
        dropped["stream_only_lost"] = c.stream_only_lost
        members_out, messages_out = c.members_out, c.messages_out
        coalesced = self._aggregator.coalesced
        return BatcherStats(
            events_in=events_in,
            members_out=members_out,
            messages_out=messages_out,
            batches_created=c.batches_created,
            messages_saved=members_out + coalesced - messages_out,
            coalesced=coalesced,
            writes=c.writes,
            retries=c.retries,
            failed_writes=c.failed_writes,
            dead_lettered=c.dead_lettered,
            dead_letter_replayed=c.dead_letter_replayed,
            dead_letter_pending=self._writer.dead_letter_pending,
            queue_depth=depth,
            queue_bytes=inbox.pending_bytes,
            mean_batch_size=members_out / messages_out if messages_out else 0.0,
            queue_time_p50_ms=self._writer.latency.percentile_ms(0.5),
            queue_time_p99_ms=self._writer.latency.percentile_ms(0.99),
            flushes=dict(self._aggregator.sealed_by),
            dropped=dropped,
        )

    def sink_stats(self) -> dict[str, Any]:
        """Per-sink counters (empty without sinks)."""
        return self._writer.sink_stats()

    # -- producing internals -------------------------------------------------------

    def _check_names(self, type: str, source: str, channel: str) -> None:
        check_name("type", type)
        check_name("source", source)
        check_channel(channel)
        if len(self._valid_names) >= _NAME_CACHE_LIMIT:
            self._valid_names.clear()
        if len(self._valid_channels) >= _NAME_CACHE_LIMIT:
            self._valid_channels.clear()
        self._valid_names.update((type, source))
        self._valid_channels.add(channel)

    def _fields_of(self, events: Sequence[Event]) -> list[_Fields]:
        for e in events:
            self._check_names(e.type, e.source, e.channel)
        return [(e.type, e.source, e.data, e.ts, e.uid, e.channel) for e in events]

    def _refuse(self) -> None:
        """The one error for events offered while not running."""
        self._require_open()
        raise BatcherClosed("the batcher is closed; events can no longer be emitted")

    def _put_now(self, items: list[_Fields], *, count_rejects: bool) -> None:
        inbox = self._inbox
        if not inbox.put_many(items, count_rejects=count_rejects):
            self._refuse()
        if inbox.shed and inbox.on_loop:
            # Ingest runs on the loop: pay the drop_oldest debt now, so the bound
            # holds between two assembler cycles too.
            self._assembler.pay_shed_debt()

    async def _put(self, items: list[_Fields], *, block: bool) -> None:
        if not block:
            self._put_now(items, count_rejects=True)
            return
        while True:
            try:
                self._put_now(items, count_rejects=False)
                return
            except QueueFull:
                await self._inbox.wait_for_room(len(items))
