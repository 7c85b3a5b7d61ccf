"""WriteWaiters: tasks waiting until everything emitted up to a sequence number is written.

Every event gets a sequence number on emit. The low-water mark is the oldest one still
in the pipeline (inbox, open groups, write queue, in flight): every event below it is
written, dropped or dead-lettered. ``flush``, durable ingest and ``aclose`` wait on it.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from sse_batcher.batching._aggregation import Aggregator
from sse_batcher.batching._writer import JournalWriter

__all__ = ["WriteWaiters"]


class WriteWaiters:
    """Releases each waiter once the low-water mark passes its sequence number.

    Args:
        inbox_low: the oldest sequence number still in the inbox, or the next one
            to be assigned when it is empty (read under the batcher's lock).
        aggregator: the open groups.
        writer: the write queue and the batch in flight.
        wake: wakes the assembler, whose cycle ends with ``release``.
    """

    def __init__(
        self,
        inbox_low: Callable[[], int],
        aggregator: Aggregator,
        writer: JournalWriter,
        wake: Callable[[], None],
    ) -> None:
        self._inbox_low = inbox_low
        self._aggregator = aggregator
        self._writer = writer
        self._wake = wake
        self._waiters: list[tuple[int, anyio.Event]] = []

    def low_water(self) -> int:
        """Every event with a sequence number below this is written or accounted for."""
        candidates = [self._inbox_low()]
        held = self._aggregator.oldest_seq()
        if held is not None:
            candidates.append(held)
        writing = self._writer.oldest_seq()
        if writing is not None:
            candidates.append(writing)
        return min(candidates)

    async def wait(self, seq: int) -> None:
        """Return once every event up to ``seq`` is written (or accounted for)."""
        if seq < self.low_water():
            return
        done = anyio.Event()
        self._waiters.append((seq, done))
        self._wake()
        await done.wait()

    def release(self) -> None:
        """Wake the waiters the low-water mark has passed (called after each step)."""
        if not self._waiters:
            return
        low = self.low_water()
        still = []
        for seq, done in self._waiters:
            if seq < low:
                done.set()
            else:
                still.append((seq, done))
        self._waiters = still
