"""SSEEventBatcher: takes events from any thread, groups them, writes each batch once.

    emit() (any thread) ──lock──► inbox deque ──wake once──► assembler task
        Aggregator: open groups, windows, size, immediate, per-entity order
    assembler ──ready events──► write queue ──► writer task
        Journal.append (one transaction for everything queued), retry with backoff,
        dead-letter after the budget; then sinks; then waiters (flush, durable ingest)

``emit`` costs a lock, a tuple and a deque append: no encoding, no I/O, and at most
one cross-thread wake-up per assembler cycle, because waking the loop costs ~14 µs
(a self-pipe write) while the append costs ~0.3 µs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from enum import Enum
from os import PathLike
from types import TracebackType
from typing import Any, Literal, Self

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._aggregation import AggregationRule, Aggregator, Flushed, Member, RuleSet
from ._dead_letter import DeadLetterStore
from ._events import EncodedEvent, Event, StoredEvent, check_name, encode_data
from ._exceptions import BatcherClosed, ConfigError, InvalidEvent, QueueFull
from ._journal import Journal
from ._sink import Sink
from ._stats import BatcherStats, LatencyWindow, WorkerInfo

__all__ = ["Overflow", "SSEEventBatcher"]

logger = logging.getLogger("sse_batcher.batcher")

Overflow = Literal["block", "reject", "drop_oldest"]
_OVERFLOWS = ("block", "reject", "drop_oldest")
_MAX_WRITE_EVENTS = 10_000  # events per journal transaction at most
_MAX_RECOVERY_DELAY = 30.0  # seconds between probes of a failing journal, at most
_NAME_CACHE_LIMIT = 4096


class _State(Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


# An emitted event waiting in the inbox: (type, source, data, ts, uid, emitted_at, seq).
# A plain tuple, because a NamedTuple or dataclass costs more to build than the
# rest of emit() together.
_Raw = tuple[str, str, Mapping[str, Any], float, "str | None", float, int]


def _copy_data(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """A shallow copy, so the caller may reuse its dict once emit returns."""
    if data.__class__ is dict:
        return data.copy()
    if data is None:
        return {}
    if isinstance(data, Mapping):
        return dict(data)
    raise InvalidEvent(f"data must be a JSON object, not {data.__class__.__name__}")


_Fields = tuple[str, str, Mapping[str, Any], float, str | None]


class _Worker:
    __slots__ = ("events_in", "last_seen", "messages_out")

    def __init__(self) -> None:
        self.events_in = 0
        self.messages_out = 0
        self.last_seen: float | None = None


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, not {value!r}")


class SSEEventBatcher:
    """Groups similar events that arrive close together and journals each batch once.

    Use it as an async context manager on an asyncio event loop; the journal must
    already be open (``async with journal, SSEEventBatcher(journal) as batcher``).

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
        drain_timeout: seconds ``aclose`` may spend writing what is pending.
        sinks: secondary destinations fed after each append (e.g. ``ArchiveSink``).
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
        self._max_events = int(max_pending_events)
        self._max_bytes = int(max_pending_bytes)
        self._block_timeout = float(block_timeout)
        self._max_retries = int(max_retries)
        self._retry_delay = float(retry_delay)
        self._drain_timeout = float(drain_timeout)
        self._sinks = tuple(sinks)
        self._clock = clock
        self._aggregator = Aggregator(RuleSet(rules), window=self.window, max_batch=self.max_batch)
        self._dead_letters = DeadLetterStore(dead_letter_path)

        # Shared with emitting threads: guarded by _lock.
        self._lock = threading.Lock()
        self._inbox: deque[_Raw] = deque()
        self._pending = 0  # events emitted and not yet written, dropped or dead-lettered
        self._pending_bytes = 0  # encoded bytes held past the inbox (updated by the loop)
        self._next_seq = 1
        self._wake_scheduled = False
        self._shed = 0  # drop_oldest debt the assembler pays from its own structures
        self._rejected = 0
        self._dropped_oldest = 0
        self._valid_names: set[tuple[str, str]] = set()
        self._state = _State.UNOPENED
        # False from a failed journal append until the next successful one: /health
        # reports it, because a journal can answer reads while every write fails.
        self.write_healthy = True

        # Loop-side state.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._wake = anyio.Event()
        self._writable = anyio.Event()
        self._room = anyio.Event()
        self._write_queue: deque[Flushed] = deque()
        self._queued_bytes = 0
        self._inflight: list[EncodedEvent] = []
        self._inflight_seq: int | None = None
        self._flush_requested = False
        self._waiters: list[tuple[int, anyio.Event]] = []
        self._unbatched: set[str] = set()
        self._workers: dict[str, _Worker] = {}
        self._exit_stack: AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None
        self._sink_set: Any = None
        self._latency = LatencyWindow()
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "members_out",
                "messages_out",
                "batches_created",
                "writes",
                "retries",
                "failed_writes",
                "dead_lettered",
                "dead_letter_replayed",
                "invalid",
                "shed",
                "stream_only_lost",
            ),
            0,
        )

    # -- lifecycle -----------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between entering the context and the start of close."""
        return self._state is _State.OPEN

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise BatcherClosed(f"a batcher cannot be started twice (it is {self._state.value})")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        async with AsyncExitStack() as stack:
            if self._sinks:
                from ._sink import SinkSet

                self._sink_set = await stack.enter_async_context(
                    SinkSet(self._sinks, drain_timeout=self._drain_timeout)
                )
            await self._dead_letters.load()  # counts what an earlier run left behind
            # Unwound in reverse: the tasks end first, then what they left is
            # dead-lettered, then the sinks drain and close.
            stack.push_async_callback(self._dead_letter_leftovers)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            await task_group.start(self._run_writer)
            await task_group.start(self._run_assembler)
            self._task_group = task_group
            self._state = _State.OPEN
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop accepting events and write everything pending within ``drain_timeout``.

        Whatever could not be written in time goes to the dead-letter store and is
        reported in the log; nothing is dropped silently.
        """
        if self._state in (_State.CLOSING, _State.CLOSED):
            return
        if self._state is _State.UNOPENED:
            self._state = _State.CLOSED
            return
        with self._lock:
            self._state = _State.CLOSING
        target = self._last_seq()
        self._request_flush()
        with anyio.move_on_after(self._drain_timeout, shield=True):
            await self._wait_written(target)
        assert self._task_group is not None and self._exit_stack is not None
        self._task_group.cancel_scope.cancel()
        self._state = _State.CLOSED
        await self._exit_stack.aclose()

    # -- producing -----------------------------------------------------------------

    def emit(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str,
        uid: str | None = None,
        ts: float | None = None,
    ) -> None:
        """Queue one event. Thread-safe; never blocks or does I/O.

        Type and source are validated here (they would break SSE framing); data is
        encoded later, off the caller's path, and an event whose data cannot be
        encoded or exceeds 64 KiB is dropped there with reason ``invalid``.

        Raises:
            QueueFull: the queue is at its bound and the policy is not drop_oldest.
            BatcherClosed: the batcher is not running.
            InvalidEvent: the type or source is invalid, or data is not a mapping.
        """
        # The hot path: every line here is paid per event (target: under 1 µs), so
        # this is _put() inlined; a call costs ~100 ns.
        if (type, source) not in self._valid_names:
            self._check_names(type, source)
        data = _copy_data(data)
        if ts is None:
            ts = time.time()
        with self._lock:
            if self._state is not _State.OPEN:
                self._require_open()
            if self._pending >= self._max_events or self._pending_bytes >= self._max_bytes:
                self._make_room(1, True)
            seq = self._next_seq
            self._next_seq = seq + 1
            self._inbox.append((type, source, data, ts, uid, time.monotonic(), seq))
            self._pending += 1
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        self._schedule_wake()

    async def aemit(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str,
        uid: str | None = None,
        ts: float | None = None,
    ) -> None:
        """Queue one event; under the ``"block"`` policy wait for room (backpressure).

        From a thread other than the batcher's event loop this behaves as ``emit``.
        """
        if (type, source) not in self._valid_names:
            self._check_names(type, source)
        fields = (type, source, _copy_data(data), time.time() if ts is None else ts, uid)
        if not self._may_block():
            self._put(*fields, True)
            return
        while True:
            try:
                self._put(*fields, False)
                return
            except QueueFull:
                await self._wait_for_room(1)

    def offer(self, events: Sequence[Event]) -> None:
        """Queue validated events all or nothing (HTTP ingest answers 503 on QueueFull)."""
        for event in events:
            if (event.type, event.source) not in self._valid_names:
                self._check_names(event.type, event.source)
        items: list[_Fields] = [(e.type, e.source, e.data, e.ts, e.uid) for e in events]
        if items:
            self._put_many(items)

    async def offer_blocking(self, events: Sequence[Event]) -> None:
        """``offer``, waiting up to ``block_timeout`` for room under ``"block"``."""
        if not self._may_block():
            self.offer(events)
            return
        for event in events:
            if (event.type, event.source) not in self._valid_names:
                self._check_names(event.type, event.source)
        items: list[_Fields] = [(e.type, e.source, e.data, e.ts, e.uid) for e in events]
        while items:
            try:
                self._put_many(items, count_rejects=False)
                return
            except QueueFull:
                await self._wait_for_room(len(items))

    async def offer_durably(self, events: Sequence[Event]) -> None:
        """``offer``, then return once every one of them is committed to the journal.

        Batching is unchanged: the call waits for the window like any other event.

        Raises:
            QueueFull: as ``offer``.
            JournalUnavailable: the journal refused them and they were dead-lettered
                (they will be re-appended later; a retry is de-duplicated by uid).
        """
        from ._exceptions import JournalUnavailable

        dead_before = self._counts["dead_lettered"]
        self.offer(events)
        await self._wait_written(self._last_seq())
        if self._counts["dead_lettered"] != dead_before:
            raise JournalUnavailable("the journal is failing; events were dead-lettered")

    async def flush(self) -> None:
        """Seal every open group now and return once everything emitted before the
        call is written (or dead-lettered)."""
        self._require_open()
        target = self._last_seq()
        self._request_flush()
        await self._wait_written(target)

    # -- workers -------------------------------------------------------------------

    def set_batching(self, source: str, enabled: bool) -> None:
        """Switch batching for one source; with it off its events go out one by one."""
        check_name("source", source)
        if enabled:
            self._unbatched.discard(source)
        else:
            self._unbatched.add(source)
        self._workers.setdefault(source, _Worker())

    def batching_enabled(self, source: str) -> bool:
        """Whether events from ``source`` are batched."""
        return source not in self._unbatched

    def workers(self) -> list[WorkerInfo]:
        """Every source seen (or configured), sorted by name."""
        return [
            WorkerInfo(
                name=name,
                events_in=w.events_in,
                messages_out=w.messages_out,
                batching=name not in self._unbatched,
                last_seen=w.last_seen,
            )
            for name, w in sorted(self._workers.items())
        ]

    def stats(self) -> BatcherStats:
        """A consistent-enough snapshot of every counter (cheap; no locks held long)."""
        c = self._counts
        with self._lock:
            events_in, depth = self._next_seq - 1, self._pending
            dropped = {
                "queue_full": self._rejected,
                "drop_oldest": self._dropped_oldest + c["shed"],
            }
        dropped["invalid"] = c["invalid"]
        dropped["stream_only_lost"] = c["stream_only_lost"]
        members_out, messages_out = c["members_out"], c["messages_out"]
        coalesced = self._aggregator.coalesced
        return BatcherStats(
            events_in=events_in,
            members_out=members_out,
            messages_out=messages_out,
            batches_created=c["batches_created"],
            messages_saved=members_out + coalesced - messages_out,
            coalesced=coalesced,
            writes=c["writes"],
            retries=c["retries"],
            failed_writes=c["failed_writes"],
            dead_lettered=c["dead_lettered"],
            dead_letter_replayed=c["dead_letter_replayed"],
            dead_letter_pending=self._dead_letters.pending,
            queue_depth=depth,
            queue_bytes=self._pending_bytes,
            mean_batch_size=members_out / messages_out if messages_out else 0.0,
            queue_time_p50_ms=self._latency.percentile_ms(0.5),
            queue_time_p99_ms=self._latency.percentile_ms(0.99),
            flushes=dict(self._aggregator.sealed_by),
            dropped=dropped,
        )

    def sink_stats(self) -> dict[str, Any]:
        """Per-sink counters (empty without sinks)."""
        return dict(self._sink_set.stats()) if self._sink_set is not None else {}

    # -- emit internals ------------------------------------------------------------

    def _check_names(self, type: str, source: str) -> None:
        check_name("type", type)
        check_name("source", source)
        if len(self._valid_names) >= _NAME_CACHE_LIMIT:
            self._valid_names.clear()
        self._valid_names.add((type, source))

    def _require_open(self) -> None:
        if self._state is not _State.OPEN:
            raise BatcherClosed(
                "the batcher is not running: use it inside 'async with SSEEventBatcher(...)'"
                if self._state is _State.UNOPENED
                else "the batcher is closed; events can no longer be emitted"
            )

    def _put(
        self,
        type: str,
        source: str,
        data: Mapping[str, Any],
        ts: float,
        uid: str | None,
        count_rejects: bool,
    ) -> None:
        with self._lock:
            if self._state is not _State.OPEN:
                self._require_open()
            if self._pending >= self._max_events or self._pending_bytes >= self._max_bytes:
                self._make_room(1, count_rejects)
            seq = self._next_seq
            self._next_seq = seq + 1
            self._inbox.append((type, source, data, ts, uid, time.monotonic(), seq))
            self._pending += 1
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        self._schedule_wake()

    def _put_many(self, items: list[_Fields], *, count_rejects: bool = True) -> None:
        n = len(items)
        with self._lock:
            if self._state is not _State.OPEN:
                self._require_open()
            if self._pending + n > self._max_events or self._pending_bytes >= self._max_bytes:
                self._make_room(n, count_rejects)
            now = time.monotonic()
            seq = self._next_seq
            self._inbox.extend((*f, now, seq + i) for i, f in enumerate(items))
            self._next_seq = seq + n
            self._pending += n
            wake = not self._wake_scheduled
            self._wake_scheduled = True
        if self._shed and threading.get_ident() == self._loop_thread:
            # Ingest runs on the loop: pay the drop_oldest debt now, so the bound
            # holds between two assembler cycles too.
            self._pay_shed_debt()
        if wake:
            self._schedule_wake()

    def _make_room(self, n: int, count_rejects: bool) -> None:
        """Called with the lock held when full: drop the oldest, or refuse."""
        if self.overflow != "drop_oldest" or n > self._max_events:
            if count_rejects:
                self._rejected += n
            raise QueueFull(
                f"the batcher holds {self._pending} events / {self._pending_bytes} bytes "
                f"(bounds {self._max_events} / {self._max_bytes}); the journal is behind"
            )
        excess = max(self._pending + n - self._max_events, 0)
        if self._pending_bytes >= self._max_bytes:
            excess = max(excess, n)
        while excess and self._inbox:
            self._inbox.popleft()
            self._pending -= 1
            self._dropped_oldest += 1
            excess -= 1
        self._shed += excess  # older events are past the inbox: the loop drops them

    def _schedule_wake(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            loop.call_soon(self._on_wake)
        else:
            try:
                loop.call_soon_threadsafe(self._on_wake)
            except RuntimeError:  # loop closed while a thread was emitting
                pass

    def _on_wake(self) -> None:
        self._wake.set()

    def _may_block(self) -> bool:
        return self.overflow == "block" and threading.get_ident() == self._loop_thread

    async def _wait_for_room(self, n: int) -> None:
        with anyio.move_on_after(self._block_timeout):
            while self._pending + n > self._max_events or self._pending_bytes >= self._max_bytes:
                self._room = anyio.Event() if self._room.is_set() else self._room
                await self._room.wait()
            return
        with self._lock:
            self._rejected += n
        raise QueueFull(
            f"no room for {n} events after waiting {self._block_timeout:g}s; the journal is behind"
        )

    def _last_seq(self) -> int:
        with self._lock:
            return self._next_seq - 1

    def _request_flush(self) -> None:
        self._flush_requested = True
        self._wake.set()

    # -- assembler -----------------------------------------------------------------

    async def _run_assembler(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        aggregator = self._aggregator
        while True:
            deadline = aggregator.next_deadline()
            timeout = math.inf if deadline is None else deadline - self._clock()
            if timeout > 0:
                with anyio.move_on_after(timeout):
                    await self._wake.wait()
            self._wake = anyio.Event()
            self._drain_inbox()
            if self._flush_requested:
                self._flush_requested = False
                aggregator.seal_all("close" if self._state is _State.CLOSING else "flush")
            ready = aggregator.ready(self._clock())
            if ready:
                self._write_queue.extend(ready)
                self._queued_bytes += sum(len(f.item.data_json) for f in ready)
                self._writable.set()
            self._update_bytes()
            self._release_waiters()

    def _drain_inbox(self) -> None:
        with self._lock:
            raws, self._inbox = self._inbox, deque()
            self._wake_scheduled = False
            shed, self._shed = self._shed, 0
        aggregator = self._aggregator
        unbatched = self._unbatched
        workers = self._workers
        coalesced_before = aggregator.coalesced
        invalid = 0
        add = aggregator.add
        for type_, source, data, ts, uid, emitted_at, seq in raws:
            worker = workers.get(source)
            if worker is None:
                worker = workers[source] = _Worker()
            worker.events_in += 1
            worker.last_seen = ts
            try:
                data_json = encode_data(data)
            except InvalidEvent as exc:
                invalid += 1
                logger.warning("dropped invalid event %s from %s: %s", type_, source, exc)
                continue
            add(
                Member(
                    type_,
                    source,
                    data,
                    ts,
                    uid,
                    data_json,
                    emitted_at,
                    source not in unbatched,
                    seq,
                )
            )
        # Superseded (latest-mode) and invalid events leave the pipeline here.
        gone = invalid + aggregator.coalesced - coalesced_before
        self._counts["invalid"] += invalid
        if gone:
            self._release(gone)
        if shed:
            self._shed_oldest(shed)  # emitted from threads: paid here, once per cycle

    def _shed_oldest(self, n: int) -> None:
        """drop_oldest when the inbox was empty: drop the oldest events held past it,
        queued writes first (they are older than any open group), then groups."""
        dropped = 0
        while dropped < n and self._write_queue:
            flushed = self._write_queue.popleft()
            dropped += flushed.item.members
            self._queued_bytes -= len(flushed.item.data_json)
        if dropped < n:
            dropped += self._aggregator.drop_oldest(n - dropped)
        if dropped:
            self._counts["shed"] += dropped
            self._release(dropped)
            self._update_bytes()

    def _pay_shed_debt(self) -> None:
        with self._lock:
            debt, self._shed = self._shed, 0
        if debt:
            self._shed_oldest(debt)

    def _release(self, events: int) -> None:
        """``events`` left the pipeline (written, dropped or dead-lettered)."""
        with self._lock:
            self._pending -= events
        self._room.set()

    def _update_bytes(self) -> None:
        self._pending_bytes = self._aggregator.bytes_held + self._queued_bytes

    # -- writer --------------------------------------------------------------------

    async def _run_writer(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        recovery_delay = self._retry_delay or 0.1
        while True:
            if not self._write_queue:
                self._writable = anyio.Event()
                if not self._dead_letters.pending:
                    await self._writable.wait()
                    continue
                # Dead letters wait for the journal to recover even without new
                # traffic: probe it with a growing delay.
                with anyio.move_on_after(recovery_delay):
                    await self._writable.wait()
                if not self._write_queue:
                    if await self._replay_dead_letters():
                        recovery_delay = self._retry_delay or 0.1
                    else:
                        recovery_delay = min(recovery_delay * 2, _MAX_RECOVERY_DELAY)
                    continue
            batch: list[EncodedEvent] = []
            self._inflight_seq = self._write_queue[0].first_seq
            while self._write_queue and len(batch) < _MAX_WRITE_EVENTS:
                batch.append(self._write_queue.popleft().item)
            self._inflight = batch
            await self._write(batch)
            self._inflight = []
            self._inflight_seq = None
            self._update_bytes()
            self._release_waiters()

    async def _write(self, batch: list[EncodedEvent]) -> None:
        self._queued_bytes -= sum(len(i.data_json) for i in batch)
        # Dead letters are older than anything queued: they go first, and while
        # they cannot be written the new batch queues behind them, so the journal
        # keeps emit order through a fault.
        if self._dead_letters.pending and not await self._replay_dead_letters():
            with anyio.CancelScope(shield=True):
                await self._dead_letter(batch)
            return
        stored = await self._append_with_retry(batch)
        if stored is None:
            logger.error(
                "journal refused %d events after %d retries; dead-lettered to %s",
                sum(i.members for i in batch),
                self._max_retries,
                self._dead_letters.path or "memory",
            )
            with anyio.CancelScope(shield=True):
                await self._dead_letter(batch)
            return
        self._record_written(batch, stored)
        self._release(sum(i.members for i in batch))

    async def _dead_letter(self, batch: list[EncodedEvent]) -> None:
        durable = [i for i in batch if i.persist]
        kept = sum(i.members for i in durable)
        total = sum(i.members for i in batch)
        self._counts["dead_lettered"] += kept
        self._counts["stream_only_lost"] += total - kept
        if durable:
            await self._dead_letters.add(durable)
        self._release(total)

    def _record_written(self, batch: list[EncodedEvent], stored: list[StoredEvent]) -> None:
        c = self._counts
        c["writes"] += 1
        now = time.monotonic()
        for item in batch:
            c["members_out"] += item.members
            c["messages_out"] += 1
            if item.members > 1:
                c["batches_created"] += 1
            worker = self._workers.get(item.event.source)
            if worker is not None:
                worker.messages_out += 1
            if item.emitted_at:
                self._latency.add(now - item.emitted_at)
        if self._sink_set is not None and stored:
            self._sink_set.offer(stored)

    async def _append_with_retry(self, batch: list[EncodedEvent]) -> list[StoredEvent] | None:
        for attempt in range(self._max_retries + 1):
            try:
                # Shielded: a commit that is under way must be seen to its end, or a
                # cancelled-but-committed batch would be dead-lettered and stored twice.
                with anyio.CancelScope(shield=True):
                    stored: list[StoredEvent] = await self.journal.append(batch)
                self.write_healthy = True
                return stored
            except Exception as exc:
                self.write_healthy = False
                self._counts["failed_writes"] += 1
                if attempt == self._max_retries:
                    logger.warning("journal append failed (%s); giving up on this batch", exc)
                    return None
                self._counts["retries"] += 1
                delay = self._retry_delay * (2**attempt) * random.uniform(0.5, 1.5)
                logger.warning("journal append failed (%s); retrying in %.2fs", exc, delay)
                await anyio.sleep(delay)
        return None

    async def _replay_dead_letters(self) -> bool:
        """Re-append dead letters in order, shrinking the store after each chunk.

        Returns True when none are left.
        """
        items = await self._dead_letters.load()
        while items:
            chunk, rest = items[:_MAX_WRITE_EVENTS], items[_MAX_WRITE_EVENTS:]
            try:
                with anyio.CancelScope(shield=True):
                    stored = await self.journal.append(chunk)
            except Exception as exc:
                self.write_healthy = False
                self._counts["failed_writes"] += 1
                logger.warning("dead-letter replay failed (%s); will retry later", exc)
                return False
            self.write_healthy = True
            self._counts["dead_letter_replayed"] += sum(i.members for i in chunk)
            self._record_written(chunk, stored)
            with anyio.CancelScope(shield=True):
                await self._dead_letters.replace(rest)
            items = rest
        return True

    async def _dead_letter_leftovers(self) -> None:
        """At close, after the tasks ended: keep what is still unwritten, say so."""
        with anyio.CancelScope(shield=True):
            await self._keep_leftovers()

    async def _keep_leftovers(self) -> None:
        self._drain_inbox()
        self._aggregator.seal_all("close")
        leftovers = self._inflight + [f.item for f in self._write_queue]
        leftovers += [f.item for f in self._aggregator.ready(math.inf)]
        self._inflight = []
        self._write_queue.clear()
        self._queued_bytes = 0
        if leftovers:
            logger.error(
                "drain deadline (%.1fs) passed: %d events not written, kept in %s",
                self._drain_timeout,
                sum(i.members for i in leftovers),
                self._dead_letters.path or "memory (lost at exit)",
            )
            await self._dead_letter(leftovers)

    # -- waiters -------------------------------------------------------------------

    def _low_water(self) -> int:
        """Every event with a sequence number below this is written or accounted for."""
        with self._lock:
            candidates = [self._next_seq]
            if self._inbox:
                candidates.append(self._inbox[0][6])
        held = self._aggregator.oldest_seq()
        if held is not None:
            candidates.append(held)
        if self._write_queue:
            candidates.append(self._write_queue[0].first_seq)
        if self._inflight_seq is not None:
            candidates.append(self._inflight_seq)
        return min(candidates)

    async def _wait_written(self, seq: int) -> None:
        if seq < self._low_water():
            return
        done = anyio.Event()
        self._waiters.append((seq, done))
        self._wake.set()
        await done.wait()

    def _release_waiters(self) -> None:
        if not self._waiters:
            return
        low = self._low_water()
        still = []
        for seq, done in self._waiters:
            if seq < low:
                done.set()
            else:
                still.append((seq, done))
        self._waiters = still
