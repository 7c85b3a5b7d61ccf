"""Assembler: the loop-side task between the batcher's inbox and its journal writer.

    Inbox.take() (swapped out under the inbox's lock, once per cycle)
        ──► encode, count per source, Aggregator.add
        ──► Aggregator.ready ──► JournalWriter.enqueue

It also pays the ``drop_oldest`` debt that emitting threads leave when the events
to drop are already past the inbox, and keeps the per-source counters.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from sse_batcher._exceptions import InvalidEvent
from sse_batcher.batching._aggregation import Aggregator
from sse_batcher.batching._events import encode_data
from sse_batcher.batching._inbox import Inbox
from sse_batcher.batching._members import Member
from sse_batcher.batching._sources import SourceTable
from sse_batcher.batching._stats import SourceCounters
from sse_batcher.batching._writer import JournalWriter

__all__ = ["Assembler", "AssemblerCounts"]

# The batcher's logger: these messages were always the batcher's, and users filter on it.
logger = logging.getLogger("sse_batcher.batcher")


@dataclass(slots=True)
class AssemblerCounts:
    """What the assembler drops itself (the writer counts the rest)."""

    invalid: int = 0  # data that cannot be encoded, or too large
    shed: int = 0  # drop_oldest paid from the groups and the write queue


class Assembler:
    """Drains the inbox into the aggregator and hands ready batches to the writer.

    Owned by ``SSEEventBatcher`` and started in its task group; it runs on the loop.

    Args:
        inbox: where emitted events wait, and the pipeline's accounting.
        aggregator: the open groups.
        writer: the write queue.
        sources: per-source counters and the batching switch.
        clock: the batcher's monotonic clock, for windows.
    """

    def __init__(
        self,
        inbox: Inbox,
        aggregator: Aggregator,
        writer: JournalWriter,
        sources: SourceTable,
        *,
        clock: Callable[[], float],
    ) -> None:
        self._inbox = inbox
        self._aggregator = aggregator
        self._writer = writer
        self._sources = sources
        self._clock = clock
        self._seal_reason: str | None = None
        self.counts = AssemblerCounts()

    def request_flush(self, reason: str) -> None:
        """Seal every open group on the next cycle, counted under ``reason``."""
        # aclose asks after any flush, so "close" wins, as it should.
        self._seal_reason = reason
        self._inbox.wake()

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        aggregator = self._aggregator
        while True:
            deadline = aggregator.next_deadline()
            timeout = math.inf if deadline is None else deadline - self._clock()
            await self._inbox.wait_for_work(timeout)
            self.drain_inbox()
            if self._seal_reason is not None:
                reason, self._seal_reason = self._seal_reason, None
                aggregator.seal_all(reason)
            ready = aggregator.ready(self._clock())
            if ready:
                self._writer.enqueue(ready)
            self._update_bytes()
            self._inbox.progressed()

    def drain_inbox(self) -> None:
        raws, shed = self._inbox.take()
        aggregator = self._aggregator
        unbatched = self._sources.unbatched
        workers = self._sources.counters
        coalesced_before = aggregator.coalesced
        invalid = 0
        add = aggregator.add
        wall_offset = time.time() - time.monotonic()
        for type_, source, data, given_ts, uid, channel, emitted_at, seq in raws:
            ts = emitted_at + wall_offset if given_ts is None else given_ts
            worker = workers.get(source)
            if worker is None:
                worker = workers[source] = SourceCounters()
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
                    channel,
                )
            )
        # Superseded (latest-mode) and invalid events leave the pipeline here.
        gone = invalid + aggregator.coalesced - coalesced_before
        self.counts.invalid += invalid
        if gone:
            self._inbox.release(gone)
        if shed:
            self._shed_oldest(shed)  # emitted from threads: paid here, once per cycle

    def pay_shed_debt(self) -> None:
        """Pay the ``drop_oldest`` debt now (loop thread only)."""
        debt = self._inbox.take_shed()
        if debt:
            self._shed_oldest(debt)

    def _shed_oldest(self, n: int) -> None:
        """drop_oldest when the inbox was empty: drop the oldest events held past it,
        queued writes first (they are older than any open group), then groups."""
        dropped = self._writer.drop_oldest(n)
        if dropped < n:
            dropped += self._aggregator.drop_oldest(n - dropped)
        if dropped:
            self.counts.shed += dropped
            self._inbox.release(dropped)
            self._update_bytes()

    def _update_bytes(self) -> None:
        inbox = self._inbox
        inbox.pending_bytes = self._aggregator.bytes_held + self._writer.queued_bytes

    async def dead_letter_leftovers(self) -> None:
        """At close, after the tasks ended: keep what is still unwritten, say so."""
        with anyio.CancelScope(shield=True):
            self.drain_inbox()
            self._aggregator.seal_all("close")
            await self._writer.keep_leftovers([f.item for f in self._aggregator.ready(math.inf)])
