"""WriteWaiters: tasks waiting until everything emitted up to a sequence number is written.

Every event gets a sequence number on emit. The low-water mark is the oldest one still
in the pipeline (inbox, open groups, write queue, in flight): every event below it is
written, dropped or dead-lettered. ``flush``, durable ingest and close wait on it, and
re-check it whenever the inbox reports progress (after each assembler cycle and write).
"""

from __future__ import annotations

from sse_batcher.batching._aggregation import Aggregator
from sse_batcher.batching._inbox import Inbox
from sse_batcher.batching._writer import JournalWriter

__all__ = ["WriteWaiters"]


class WriteWaiters:
    """Waits for the low-water mark to pass a sequence number.

    Args:
        inbox: the inbox (its oldest sequence number, and the progress signal).
        aggregator: the open groups.
        writer: the write queue and the batch in flight.
    """

    def __init__(self, inbox: Inbox, aggregator: Aggregator, writer: JournalWriter) -> None:
        self._inbox = inbox
        self._aggregator = aggregator
        self._writer = writer

    def low_water(self) -> int:
        """Every event with a sequence number below this is written or accounted for."""
        candidates = [self._inbox.low_seq()]
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
        self._inbox.wake()  # one assembler cycle moves the inbox on; windows do the rest
        while seq >= self.low_water():
            await self._inbox.wait_progress()
