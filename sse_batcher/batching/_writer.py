"""JournalWriter: the batcher's write side, from its write queue to the journal and sinks.

    write queue ──► take everything queued (≤ 10,000 events) ──► Journal.append (shielded)
        ok ──► counters, sinks, dead letters re-appended first next time, progress
        error ──► backoff_delay(n) ─ after max_retries ──► dead-letter store

It is owned by ``SSEEventBatcher``: entered in its lifespan, ``run`` started in its
task group. It reports to the :class:`~sse_batcher.batching._inbox.Inbox` it is given:
room released as events leave the pipeline, and progress after each batch.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from sse_batcher._backoff import backoff_delay
from sse_batcher._lifecycle import Resource
from sse_batcher.batching._dead_letter import DeadLetterStore
from sse_batcher.batching._events import EncodedEvent, StoredEvent
from sse_batcher.batching._inbox import Inbox
from sse_batcher.batching._journal import Journal
from sse_batcher.batching._members import Flushed
from sse_batcher.batching._sink import Sink
from sse_batcher.batching._sources import SourceTable
from sse_batcher.batching._stats import LatencyWindow

if TYPE_CHECKING:
    from sse_batcher.batching._sink_set import SinkSet

__all__ = ["JournalWriter", "WriterCounts"]

# The batcher's logger: these messages were always the batcher's, and users filter on it.
logger = logging.getLogger("sse_batcher.batcher")

_MAX_WRITE_EVENTS = 10_000  # events per journal transaction at most
_MAX_RECOVERY_DELAY = 30.0  # seconds between probes of a failing journal, at most


@dataclass(slots=True)
class WriterCounts:
    """What the writer counts; ``SSEEventBatcher.stats`` reads it."""

    members_out: int = 0
    messages_out: int = 0
    batches_created: int = 0
    writes: int = 0
    retries: int = 0
    failed_writes: int = 0
    dead_lettered: int = 0
    dead_letter_replayed: int = 0
    stream_only_lost: int = 0


class JournalWriter(Resource):
    """Appends queued batches to the journal in order, retrying, then dead-lettering.

    Args:
        journal: the open journal to append to.
        dead_letter_path: JSON-lines file for batches the journal refused; None
            keeps them in memory.
        max_retries: journal retries per batch before it is dead-lettered.
        retry_delay: first retry delay in seconds; doubles each retry, with jitter.
        drain_timeout: how long the sinks may drain at close (and what the
            leftovers log line reports).
        sinks: secondary destinations fed after each append.
        inbox: the pipeline's accounting (room and progress are reported there).
        sources: the per-source counters (``messages_out`` is counted here).
    """

    def __init__(
        self,
        journal: Journal,
        *,
        dead_letter_path: str | PathLike[str] | None,
        max_retries: int,
        retry_delay: float,
        drain_timeout: float,
        sinks: Sequence[Sink],
        inbox: Inbox,
        sources: SourceTable,
    ) -> None:
        self._journal = journal
        self._dead_letters = DeadLetterStore(dead_letter_path)
        self._max_retries = max_retries
        self._retry_delay = retry_delay
        self._drain_timeout = drain_timeout
        self._sinks = tuple(sinks)
        self._inbox = inbox
        self._sources = sources
        self._queue: deque[Flushed] = deque()
        self._writable = anyio.Event()
        self._inflight: list[EncodedEvent] = []
        self._inflight_seq: int | None = None
        self._sink_set: SinkSet | None = None
        self.queued_bytes = 0  # encoded bytes in the write queue (not in flight)
        # False from a failed journal append until the next successful one: /health
        # reports it, because a journal can answer reads while every write fails.
        self.healthy = True
        self.latency = LatencyWindow()
        self.counts = WriterCounts()

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:  # at exit the sinks drain and close
            if self._sinks:
                from sse_batcher.batching._sink_set import SinkSet

                self._sink_set = await stack.enter_async_context(
                    SinkSet(self._sinks, drain_timeout=self._drain_timeout)
                )
            await self._dead_letters.load()  # counts what an earlier run left behind
            yield

    # -- the batcher's side ----------------------------------------------------------

    @property
    def dead_letter_pending(self) -> int:
        """Events in the dead-letter store, waiting for the journal to recover."""
        return self._dead_letters.pending

    def sink_stats(self) -> dict[str, Any]:
        """Per-sink counters (empty without sinks)."""
        return dict(self._sink_set.stats()) if self._sink_set is not None else {}

    def enqueue(self, ready: list[Flushed]) -> None:
        """Queue sealed groups, in order, and wake the writer."""
        self._queue.extend(ready)
        self.queued_bytes += sum(len(f.item.data_json) for f in ready)
        self._writable.set()

    def drop_oldest(self, n: int) -> int:
        """Drop queued writes from the front until ``n`` events are gone (or none are
        left); returns how many were dropped. The caller counts and releases them."""
        dropped = 0
        while dropped < n and self._queue:
            flushed = self._queue.popleft()
            dropped += flushed.item.members
            self.queued_bytes -= len(flushed.item.data_json)
        return dropped

    def oldest_seq(self) -> int | None:
        """The sequence number of the oldest event queued or in flight, if any."""
        oldest = self._queue[0].first_seq if self._queue else None
        if self._inflight_seq is not None and (oldest is None or self._inflight_seq < oldest):
            oldest = self._inflight_seq
        return oldest

    async def keep_leftovers(self, unsealed: list[EncodedEvent]) -> None:
        """At close, after the tasks ended: keep what is still unwritten (what was in
        flight, then queued, then ``unsealed`` from the groups), and say so."""
        leftovers = self._inflight + [f.item for f in self._queue] + unsealed
        self._inflight = []
        self._queue.clear()
        self.queued_bytes = 0
        if leftovers:
            logger.error(
                "drain deadline (%.1fs) passed: %d events not written, kept in %s",
                self._drain_timeout,
                sum(i.members for i in leftovers),
                self._dead_letters.path or "memory (lost at exit)",
            )
            await self._dead_letter(leftovers)

    # -- the task --------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Write until cancelled (the batcher cancels its task group at close)."""
        task_status.started()
        recovery_delay = self._retry_delay or 0.1
        while True:
            if not self._queue:
                self._writable = anyio.Event()
                if not self._dead_letters.pending:
                    await self._writable.wait()
                    continue
                # Dead letters wait for the journal to recover even without new
                # traffic: probe it with a growing delay.
                with anyio.move_on_after(recovery_delay):
                    await self._writable.wait()
                if not self._queue:
                    if await self._replay_dead_letters():
                        recovery_delay = self._retry_delay or 0.1
                    else:
                        recovery_delay = min(recovery_delay * 2, _MAX_RECOVERY_DELAY)
                    continue
            batch: list[EncodedEvent] = []
            self._inflight_seq = self._queue[0].first_seq
            while self._queue and len(batch) < _MAX_WRITE_EVENTS:
                batch.append(self._queue.popleft().item)
            self._inflight = batch
            await self._write(batch)
            self._inflight = []
            self._inflight_seq = None
            self._inbox.progressed()

    async def _write(self, batch: list[EncodedEvent]) -> None:
        taken = sum(len(i.data_json) for i in batch)
        self.queued_bytes -= taken
        self._inbox.pending_bytes -= taken
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
        self._inbox.release(sum(i.members for i in batch))

    async def _dead_letter(self, batch: list[EncodedEvent]) -> None:
        durable = [i for i in batch if i.persist]
        kept = sum(i.members for i in durable)
        total = sum(i.members for i in batch)
        self.counts.dead_lettered += kept
        self.counts.stream_only_lost += total - kept
        if durable:
            await self._dead_letters.add(durable)
        self._inbox.release(total)

    def _record_written(self, batch: list[EncodedEvent], stored: list[StoredEvent]) -> None:
        c = self.counts
        c.writes += 1
        counters = self._sources.counters
        now = time.monotonic()
        for item in batch:
            c.members_out += item.members
            c.messages_out += 1
            if item.members > 1:
                c.batches_created += 1
            worker = counters.get(item.event.source)
            if worker is not None:
                worker.messages_out += 1
            if item.emitted_at:
                self.latency.add(now - item.emitted_at)
        if self._sink_set is not None and stored:
            self._sink_set.offer(stored)

    async def _append_with_retry(self, batch: list[EncodedEvent]) -> list[StoredEvent] | None:
        for attempt in range(self._max_retries + 1):
            try:
                # Shielded: a commit that is under way must be seen to its end, or a
                # cancelled-but-committed batch would be dead-lettered and stored twice.
                with anyio.CancelScope(shield=True):
                    stored: list[StoredEvent] = await self._journal.append(batch)
                self.healthy = True
                return stored
            except Exception as exc:
                self.healthy = False
                self.counts.failed_writes += 1
                if attempt == self._max_retries:
                    logger.warning("journal append failed (%s); giving up on this batch", exc)
                    return None
                self.counts.retries += 1
                delay = backoff_delay(attempt, initial=self._retry_delay)
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
                    stored = await self._journal.append(chunk)
            except Exception as exc:
                self.healthy = False
                self.counts.failed_writes += 1
                logger.warning("dead-letter replay failed (%s); will retry later", exc)
                return False
            self.healthy = True
            self.counts.dead_letter_replayed += sum(i.members for i in chunk)
            self._record_written(chunk, stored)
            with anyio.CancelScope(shield=True):
                await self._dead_letters.replace(rest)
            items = rest
        return True
