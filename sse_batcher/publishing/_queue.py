"""The queue under :class:`~sse_batcher.publishing._core.PublisherCore`: memory, spool, counters.

The queue is ``spool ++ memory``: lines in the spool are always older than those in
memory, because a spill moves *all* of memory to the spool's end. Only the sender
consumes the head, and it consumes "the first n events of the queue" wherever they
are now: a batch peeked from memory may have been spilled while its request was in
flight, and is then acknowledged in the spool. ``_spool_lock`` serialises every
head operation with every spill; ``lock`` guards counters and memory and is held
only for short, non-blocking sections (``publish()`` never waits on file I/O unless
it spills an overflowing buffer itself).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from sse_batcher.publishing._model import Io, PublisherConfig, PublisherStats, is_event_line
from sse_batcher.publishing._spool import Spool

__all__ = ["PublishQueue"]

logger = logging.getLogger("sse_batcher.publisher")

_KEPT_REASONS = 20

# One entry in memory: (sequence number, monotonic time of publish, encoded line).
_Item = tuple[int, float, bytes]


class PublishQueue:
    """The publisher's queue (memory, then the spool), its two locks and its counters.

    The base of :class:`~sse_batcher.publishing._core.PublisherCore`, which decides when
    to peek, send and consume; everything here is blocking local work or bookkeeping.

    Args:
        config: the settings.
        on_progress: called (with the lock held) when events left memory (for flush waiters).
    """

    def __init__(self, config: PublisherConfig, *, on_progress: Callable[[], None]) -> None:
        self.config = config
        self.lock = threading.Lock()
        self._spool_lock = threading.Lock()
        self._on_progress = on_progress
        self._memory: deque[_Item] = deque()
        self._seq = itertools.count(1)
        self._last_seq = 0
        self._left_seq = 0  # every event with seq <= this has left memory
        self._spool = Spool(config.resolved_spool_path()) if config.spool else None
        self._spool_failed = False
        self.closed = False
        self._counts = dict.fromkeys(
            (
                "sent",
                "duplicates",
                "batches",
                "requests",
                "retries",
                "fallbacks",
                "spooled",
                "unspooled",
                "rejected",
                "dropped",
            ),
            0,
        )
        self._reasons: deque[str] = deque(maxlen=_KEPT_REASONS)
        self._last_error: str | None = None

    # ---------------------------------------------------------------- front-end API

    def stats(self) -> PublisherStats:
        with self.lock:
            pending = self._spool.pending if self._spool is not None else 0
            return PublisherStats(
                **self._counts,
                rejected_reasons=tuple(self._reasons),
                buffered=len(self._memory) + pending,
                spool_pending=pending,
                last_error=self._last_error,
            )

    @property
    def spool_file(self) -> str | None:
        """The spool file in use (None without a spool)."""
        return None if self._spool is None else str(self._spool.path)

    def spill(self) -> None:
        """Move all of memory to the spool (blocking file I/O, fsync). Never raises."""
        with self._spool_lock:
            self._spill_locked()

    def abandon(self) -> None:
        """After ``run()`` stopped: spool what is left in memory (or drop it), release the spool."""
        with self.lock:
            self.closed = True  # from here on publish() drops: nothing can slip in after
        with self._spool_lock:
            if self._memory:
                self._spill_locked()
            with self.lock:
                if self._memory:
                    why = f"; last error: {self._last_error}" if self._last_error else ""
                    self._drop_memory_locked(
                        f"{len(self._memory)} events undelivered at close{why}"
                    )
            self._close_spool_locked()

    def _io(self, fn: Callable[[], Any]) -> Io:
        with self.lock:
            idle = self._spool is None or self._spool.pending == 0
        return Io(fn, inline=idle)

    def _reject(self, count: int, reason: str) -> None:
        self._counts["rejected"] += count
        self._reasons.append(reason)

    # ---------------------------------------------------------------- queue (spool_lock)

    def _open_spool(self) -> None:
        assert self._spool is not None
        with self._spool_lock:
            try:
                self._spool.open()
            except OSError as exc:
                self._spool_failed = True
                logger.error(
                    "cannot open the spool %s (%s): spooling is off", self._spool.path, exc
                )

    def _peek(self) -> list[bytes]:
        count = self.config.max_batch_size
        with self._spool_lock:
            spool = self._spool
            while spool is not None and spool.is_open and spool.pending:
                lines = spool.read(count)
                good = list(itertools.takewhile(is_event_line, lines))
                if good:
                    return good
                # A damaged line (the file was edited, or a disk error): skip it, loudly.
                with self.lock:
                    self._counts["dropped"] += 1
                    self._last_error = f"damaged spool line dropped: {lines[0][:80]!r}"
                spool.ack(1)
            with self.lock:
                return [item[2] for item in itertools.islice(self._memory, count)]

    def _consume(self, count: int) -> None:
        """The server answered for the queue's first ``count`` events: remove them."""
        with self._spool_lock:
            spool = self._spool
            if spool is not None and spool.is_open and spool.pending:
                spool.ack(count)
                with self.lock:
                    self._counts["unspooled"] += count
                return
            with self.lock:
                last = 0
                for _ in range(min(count, len(self._memory))):
                    last = self._memory.popleft()[0]
                if last:
                    self._left_seq = last
                    self._on_progress()

    def _spill_locked(self) -> None:
        spool = self._spool
        with self.lock:
            if spool is None or self._spool_failed or not self._memory:
                return
            items = list(self._memory)
        try:
            if not spool.is_open:
                spool.open()
            spool.append([item[2] for item in items])
        except OSError as exc:
            with self.lock:
                self._last_error = f"spool write failed: {exc}"
            logger.error("cannot write the spool %s: %s", spool.path, exc)
            return
        with self.lock:
            for _ in items:
                self._memory.popleft()
            self._counts["spooled"] += len(items)
            self._left_seq = items[-1][0]
            self._on_progress()

    def _drop_memory_locked(self, reason: str) -> None:
        count = len(self._memory)
        self._memory.clear()
        self._counts["dropped"] += count
        self._last_error = reason
        self._left_seq = self._last_seq
        self._on_progress()

    def _close_spool_locked(self) -> None:
        if self._spool is not None and self._spool.is_open:
            try:
                self._spool.close()
            except OSError as exc:
                logger.error("cannot close the spool %s: %s", self._spool.path, exc)
