"""Assembler: the loop-side task between the batcher's inbox and its journal writer.

    inbox (swapped out under the batcher's lock, once per cycle)
        ──► encode, count per source, Aggregator.add
        ──► Aggregator.ready ──► JournalWriter.enqueue

It also pays the ``drop_oldest`` debt that emitting threads leave when the events
to drop are already past the inbox, and keeps the per-source counters.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Set
from typing import Any

import anyio
from anyio.abc import TaskStatus

from sse_batcher._exceptions import InvalidEvent
from sse_batcher.batching._aggregation import Aggregator, Member
from sse_batcher.batching._events import encode_data
from sse_batcher.batching._stats import SourceCounters, WorkerInfo
from sse_batcher.batching._writer import JournalWriter

__all__ = ["Assembler", "Raw"]

# The batcher's logger: these messages were always the batcher's, and users filter on it.
logger = logging.getLogger("sse_batcher.batcher")

# An emitted event waiting in the inbox: (type, source, data, ts, uid, emitted_at, seq).
# A plain tuple, because a NamedTuple or dataclass costs more to build than the
# rest of emit() together.
Raw = tuple[str, str, Mapping[str, Any], "float | None", "str | None", float, int]


class Assembler:
    """Drains the inbox into the aggregator and hands ready batches to the writer.

    Owned by ``SSEEventBatcher`` and started in its task group; it runs on the loop.

    Args:
        take_inbox: swaps out the inbox under the batcher's lock (clearing its
            wake-up flag) and returns it with the ``drop_oldest`` debt, also cleared.
        take_shed: takes (and clears) only the ``drop_oldest`` debt, under the lock.
        aggregator: the open groups.
        writer: the write queue.
        workers: per-source counters, shared with the writer.
        unbatched: sources whose events go out one by one.
        release: ``events`` left the pipeline (frees room for emitters).
        update_bytes: recomputes the bytes the batcher holds past its inbox.
        progressed: called after each cycle (bytes held, then waiters).
        clock: the batcher's monotonic clock, for windows.
    """

    def __init__(
        self,
        take_inbox: Callable[[], tuple[deque[Raw], int]],
        take_shed: Callable[[], int],
        aggregator: Aggregator,
        writer: JournalWriter,
        *,
        workers: dict[str, SourceCounters],
        unbatched: Set[str],
        release: Callable[[int], None],
        update_bytes: Callable[[], None],
        progressed: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self._take_inbox = take_inbox
        self._take_shed = take_shed
        self._aggregator = aggregator
        self._writer = writer
        self._workers = workers
        self._unbatched = unbatched
        self._release = release
        self._update_bytes = update_bytes
        self._progressed = progressed
        self._clock = clock
        self._wake = anyio.Event()
        self._seal_reason: str | None = None
        self.counts: dict[str, int] = {"invalid": 0, "shed": 0}  # the writer counts the rest

    def wake(self) -> None:
        """Run a cycle now (loop thread only)."""
        self._wake.set()

    def request_flush(self, reason: str) -> None:
        """Seal every open group on the next cycle, counted under ``reason``."""
        # aclose asks after any flush, so "close" wins, as it should.
        self._seal_reason = reason
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        aggregator = self._aggregator
        while True:
            deadline = aggregator.next_deadline()
            timeout = math.inf if deadline is None else deadline - self._clock()
            if timeout > 0:
                with anyio.move_on_after(timeout):
                    await self._wake.wait()
            self._wake = anyio.Event()
            self.drain_inbox()
            if self._seal_reason is not None:
                reason, self._seal_reason = self._seal_reason, None
                aggregator.seal_all(reason)
            ready = aggregator.ready(self._clock())
            if ready:
                self._writer.enqueue(ready)
            self._progressed()

    def drain_inbox(self) -> None:
        raws, shed = self._take_inbox()
        aggregator = self._aggregator
        unbatched = self._unbatched
        workers = self._workers
        coalesced_before = aggregator.coalesced
        invalid = 0
        add = aggregator.add
        wall_offset = time.time() - time.monotonic()
        for type_, source, data, given_ts, uid, emitted_at, seq in raws:
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
                )
            )
        # Superseded (latest-mode) and invalid events leave the pipeline here.
        gone = invalid + aggregator.coalesced - coalesced_before
        self.counts["invalid"] += invalid
        if gone:
            self._release(gone)
        if shed:
            self._shed_oldest(shed)  # emitted from threads: paid here, once per cycle

    def pay_shed_debt(self) -> None:
        """Pay the ``drop_oldest`` debt now (loop thread only)."""
        debt = self._take_shed()
        if debt:
            self._shed_oldest(debt)

    def _shed_oldest(self, n: int) -> None:
        """drop_oldest when the inbox was empty: drop the oldest events held past it,
        queued writes first (they are older than any open group), then groups."""
        dropped = self._writer.drop_oldest(n)
        if dropped < n:
            dropped += self._aggregator.drop_oldest(n - dropped)
        if dropped:
            self.counts["shed"] += dropped
            self._release(dropped)
            self._update_bytes()

    def worker_infos(self) -> list[WorkerInfo]:
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

    async def dead_letter_leftovers(self) -> None:
        """At close, after the tasks ended: keep what is still unwritten, say so."""
        with anyio.CancelScope(shield=True):
            self.drain_inbox()
            self._aggregator.seal_all("close")
            await self._writer.keep_leftovers([f.item for f in self._aggregator.ready(math.inf)])
