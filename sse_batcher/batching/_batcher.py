"""SSEEventBatcher: takes events from any thread, groups them, writes each batch once.

    emit() (any thread) ──lock──► inbox deque ──wake once──► assembler task
        (``_assembler.Assembler``) Aggregator: open groups, windows, size, immediate,
        per-entity order
    assembler ──ready events──► write queue ──► writer task (``_writer.JournalWriter``)
        Journal.append (one transaction for everything queued), retry with backoff,
        dead-letter after the budget; then sinks; then waiters (``_waiters.WriteWaiters``:
        flush, durable ingest, close)

``emit`` costs a lock, a tuple and a deque append: no encoding, no I/O, and at most
one cross-thread wake-up per assembler cycle, because waking the loop costs ~14 µs
(a self-pipe write) while the append costs ~0.3 µs.
"""

from __future__ import annotations

import asyncio
import math
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
from anyio.abc import TaskGroup

from sse_batcher._exceptions import BatcherClosed, ConfigError, InvalidEvent, QueueFull
from sse_batcher.batching._aggregation import AggregationRule, Aggregator, RuleSet
from sse_batcher.batching._assembler import Assembler, Raw
from sse_batcher.batching._events import Event, check_name
from sse_batcher.batching._journal import Journal
from sse_batcher.batching._sink import Sink
from sse_batcher.batching._stats import BatcherStats, SourceCounters, WorkerInfo
from sse_batcher.batching._waiters import WriteWaiters
from sse_batcher.batching._writer import JournalWriter

__all__ = ["Overflow", "SSEEventBatcher"]

Overflow = Literal["block", "reject", "drop_oldest"]
_OVERFLOWS = ("block", "reject", "drop_oldest")
_NAME_CACHE_LIMIT = 4096


class _State(Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


# _writer.py imports the per-source counters from here (for typing only).


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
        self._drain_timeout = float(drain_timeout)
        self._aggregator = Aggregator(RuleSet(rules), window=self.window, max_batch=self.max_batch)

        # Shared with emitting threads: guarded by _lock.
        self._lock = threading.Lock()
        self._inbox: deque[Raw] = deque()
        self._pending = 0  # events emitted and not yet written, dropped or dead-lettered
        self._pending_bytes = 0  # encoded bytes held past the inbox (updated by the loop)
        self._next_seq = 1
        self._wake_scheduled = False
        self._shed = 0  # drop_oldest debt the assembler pays from its own structures
        self._rejected = 0
        self._dropped_oldest = 0
        # Names already validated (types and sources alike: the rules are the same).
        self._valid_names: set[str] = set()
        self._state = _State.UNOPENED

        # Loop-side state.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._room = anyio.Event()
        self._unbatched: set[str] = set()
        self._workers: dict[str, SourceCounters] = {}
        self._exit_stack: AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None
        self._writer = JournalWriter(
            journal,
            dead_letter_path=dead_letter_path,
            max_retries=int(max_retries),
            retry_delay=float(retry_delay),
            drain_timeout=self._drain_timeout,
            sinks=sinks,
            workers=self._workers,
            release=self._release,
            progress=self._progressed,
        )
        self._waiters = WriteWaiters(self._inbox_low, self._aggregator, self._writer, self._on_wake)
        self._assembler = Assembler(
            self._take_inbox,
            self._take_shed,
            self._aggregator,
            self._writer,
            workers=self._workers,
            unbatched=self._unbatched,
            release=self._release,
            update_bytes=self._update_bytes,
            progressed=self._progressed,
            clock=clock,
        )

    # -- lifecycle -----------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between entering the context and the start of close."""
        return self._state is _State.OPEN

    @property
    def write_healthy(self) -> bool:
        """False from a failed journal append until the next successful one.

        /health reports it, because a journal can answer reads while every write fails.
        """
        return self._writer.healthy

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise BatcherClosed(f"a batcher cannot be started twice (it is {self._state.value})")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        async with AsyncExitStack() as stack:
            # Opens the sinks and counts what an earlier run left in the dead letters.
            await stack.enter_async_context(self._writer)
            # Unwound in reverse: the tasks end first, then what they left is
            # dead-lettered, then the sinks drain and close.
            stack.push_async_callback(self._assembler.dead_letter_leftovers)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            await task_group.start(self._writer.run)
            await task_group.start(self._assembler.run)
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
        self._assembler.request_flush("close")
        with anyio.move_on_after(self._drain_timeout, shield=True):
            await self._waiters.wait(target)
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
        if type not in self._valid_names or source not in self._valid_names:
            self._check_names(type, source)
        # A shallow copy (the caller may reuse its dict); inline for plain dicts.
        data = data.copy() if data.__class__ is dict else _copy_data(data)
        # One clock call: ts (wall time) left None is derived from the monotonic
        # stamp when the inbox is drained, microseconds later.
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
        if type not in self._valid_names or source not in self._valid_names:
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
            if event.type not in self._valid_names or event.source not in self._valid_names:
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
            if event.type not in self._valid_names or event.source not in self._valid_names:
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
        from sse_batcher._exceptions import JournalUnavailable

        writer_counts = self._writer.counts
        dead_before = writer_counts["dead_lettered"]
        self.offer(events)
        await self._waiters.wait(self._last_seq())
        if writer_counts["dead_lettered"] != dead_before:
            raise JournalUnavailable("the journal is failing; events were dead-lettered")

    async def flush(self) -> None:
        """Seal every open group now and return once everything emitted before the
        call is written (or dead-lettered)."""
        self._require_open()
        target = self._last_seq()
        self._assembler.request_flush("flush")
        await self._waiters.wait(target)

    # -- workers -------------------------------------------------------------------

    def set_batching(self, source: str, enabled: bool) -> None:
        """Switch batching for one source; with it off its events go out one by one."""
        check_name("source", source)
        if enabled:
            self._unbatched.discard(source)
        else:
            self._unbatched.add(source)
        self._workers.setdefault(source, SourceCounters())

    def batching_enabled(self, source: str) -> bool:
        """Whether events from ``source`` are batched."""
        return source not in self._unbatched

    def workers(self) -> list[WorkerInfo]:
        """Every source seen (or configured), sorted by name."""
        return self._assembler.worker_infos()

    def stats(self) -> BatcherStats:
        """A consistent-enough snapshot of every counter (cheap; no locks held long)."""
        c = self._writer.counts
        counts = self._assembler.counts
        with self._lock:
            events_in, depth = self._next_seq - 1, self._pending
            dropped = {
                "queue_full": self._rejected,
                "drop_oldest": self._dropped_oldest + counts["shed"],
            }
        dropped["invalid"] = counts["invalid"]
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
            dead_letter_pending=self._writer.dead_letter_pending,
            queue_depth=depth,
            queue_bytes=self._pending_bytes,
            mean_batch_size=members_out / messages_out if messages_out else 0.0,
            queue_time_p50_ms=self._writer.latency.percentile_ms(0.5),
            queue_time_p99_ms=self._writer.latency.percentile_ms(0.99),
            flushes=dict(self._aggregator.sealed_by),
            dropped=dropped,
        )

    def sink_stats(self) -> dict[str, Any]:
        """Per-sink counters (empty without sinks)."""
        return self._writer.sink_stats()

    # -- emit internals ------------------------------------------------------------

    def _check_names(self, type: str, source: str) -> None:
        check_name("type", type)
        check_name("source", source)
        if len(self._valid_names) >= _NAME_CACHE_LIMIT:
            self._valid_names.clear()
        self._valid_names.add(type)
        self._valid_names.add(source)

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
            self._assembler.pay_shed_debt()
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
        self._assembler.wake()

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

    # -- assembler interface -------------------------------------------------------

    def _take_inbox(self) -> tuple[deque[Raw], int]:
        """Swap out the inbox with the drop_oldest debt (the next emit wakes the loop)."""
        with self._lock:
            raws, self._inbox = self._inbox, deque()
            self._wake_scheduled = False
            shed, self._shed = self._shed, 0
        return raws, shed

    def _take_shed(self) -> int:
        with self._lock:
            debt, self._shed = self._shed, 0
        return debt

    def _release(self, events: int) -> None:
        """``events`` left the pipeline (written, dropped or dead-lettered)."""
        with self._lock:
            self._pending -= events
        self._room.set()

    def _update_bytes(self) -> None:
        self._pending_bytes = self._aggregator.bytes_held + self._writer.queued_bytes

    def _progressed(self) -> None:
        """After each assembler cycle and each write: bytes held, then waiters."""
        self._update_bytes()
        self._waiters.release()

    def _inbox_low(self) -> int:
        """The oldest sequence number in the inbox, or the next one when it is empty."""
        with self._lock:
            return self._inbox[0][6] if self._inbox else self._next_seq
