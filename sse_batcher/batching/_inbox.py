"""Inbox: where emitted events wait for the assembler, and the pipeline's accounting.

One object, given down to the assembler, the writer and the waiters (they never get
the batcher's methods): emitting threads append here under one lock; the assembler
swaps the whole deque out once per cycle; the writer releases room as batches leave;
anyone waiting for progress (``flush``, durable ingest, close) waits here.

    emit() ──lock──► items ──wake once per cycle──► assembler: take()
    writer / assembler ──release(n), drop_bytes(b), progressed()──► emitters, waiters

The fields the hot path touches are plain attributes: ``SSEEventBatcher.emit`` reads
and writes them inline under :attr:`lock`, because a method call costs ~100 ns and
emit's whole budget is ~1 µs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from sse_batcher._exceptions import QueueFull

__all__ = ["Inbox", "Overflow", "Raw"]

Overflow = Literal["block", "reject", "drop_oldest"]

# An emitted event waiting in the inbox:
# (type, source, data, ts, uid, channel, emitted_at, seq).
# A plain tuple, because a NamedTuple or dataclass costs more to build than the
# rest of emit() together.
Raw = tuple[str, str, Mapping[str, Any], "float | None", "str | None", str, float, int]


@dataclass(slots=True)
class InboxCounts:
    """What the inbox refused or dropped itself (the assembler and writer count the rest)."""

    rejected: int = 0  # refused with QueueFull
    dropped_oldest: int = 0  # dropped from the inbox by drop_oldest


class Inbox:
    """The bounded queue between emitting threads and the loop, with its accounting.

    Args:
        max_events: events held in the whole pipeline (inbox, groups, write queue).
        max_bytes: encoded bytes held past the inbox.
        overflow: what a full pipeline does to a new event.
        block_timeout: how long ``wait_for_room`` waits under ``"block"``.
    """

    def __init__(
        self, *, max_events: int, max_bytes: int, overflow: Overflow, block_timeout: float
    ) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.overflow: Overflow = overflow
        self.block_timeout = block_timeout
        # Shared with emitting threads: guarded by lock.
        self.lock = threading.Lock()
        self.items: deque[Raw] = deque()
        self.accepting = False
        self.pending = 0  # events emitted and not yet written, dropped or dead-lettered
        self.pending_bytes = 0  # encoded bytes held past the inbox (written by the loop)
        self.next_seq = 1
        self.wake_scheduled = False
        self.shed = 0  # drop_oldest debt the assembler pays from its own structures
        self.counts = InboxCounts()
        # Loop side.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._work = anyio.Event()
        self._room = anyio.Event()
        self._progress: anyio.Event | None = None

    # -- lifecycle (called by the batcher on its loop) ---------------------------------

    def open(self) -> None:
        """Accept events from now on; wake-ups go to the current event loop."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        with self.lock:
            self.accepting = True

    def close(self) -> None:
        """Refuse events from now on (what is inside still drains)."""
        with self.lock:
            self.accepting = False

    @property
    def on_loop(self) -> bool:
        """True on the thread that runs the batcher's event loop."""
        return threading.get_ident() == self._loop_thread

    # -- the emitting side ---------------------------------------------------------

    def put_many(self, items: list[tuple[Any, ...]], *, count_rejects: bool) -> bool:
        """Append ``(type, source, data, ts, uid, channel)`` tuples all or nothing.

        Returns False, appending nothing, when the inbox is not accepting (the caller
        raises its own error); raises QueueFull when full and the policy refuses.
        """
        n = len(items)
        with self.lock:
            if not self.accepting:
                return False
            if self.pending + n > self.max_events or self.pending_bytes >= self.max_bytes:
                self.make_room(n, count_rejects)
            now = time.monotonic()
            seq = self.next_seq
            self.items.extend((*f, now, seq + i) for i, f in enumerate(items))
            self.next_seq = seq + n
            self.pending += n
            wake = not self.wake_scheduled
            self.wake_scheduled = True
        if wake:
            self.schedule_wake()
        return True

    def make_room(self, n: int, count_rejects: bool) -> None:
        """Called with the lock held when full: drop the oldest, or refuse."""
        if self.overflow != "drop_oldest" or n > self.max_events:
            if count_rejects:
                self.counts.rejected += n
            raise QueueFull(
                f"the batcher holds {self.pending} events / {self.pending_bytes} bytes "
                f"(bounds {self.max_events} / {self.max_bytes}); the journal is behind"
            )
        excess = max(self.pending + n - self.max_events, 0)
        if self.pending_bytes >= self.max_bytes:
            excess = max(excess, n)
        items = self.items
        while excess and items:
            items.popleft()
            self.pending -= 1
            self.counts.dropped_oldest += 1
            excess -= 1
        self.shed += excess  # older events are past the inbox: the loop drops them

    def schedule_wake(self) -> None:
        """Wake the assembler from any thread (once per cycle: the caller checked)."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            loop.call_soon(self._work.set)
        else:
            try:
                loop.call_soon_threadsafe(self._work.set)
            except RuntimeError:  # loop closed while a thread was emitting
                pass

    def may_block(self) -> bool:
        """Whether a full pipeline may make this caller wait (``"block"``, on the loop)."""
        return self.overflow == "block" and threading.get_ident() == self._loop_thread

    async def wait_for_room(self, n: int) -> None:
        """Wait up to ``block_timeout`` until ``n`` more events fit; else QueueFull."""
        with anyio.move_on_after(self.block_timeout):
            while self.pending + n > self.max_events or self.pending_bytes >= self.max_bytes:
                self._room = anyio.Event() if self._room.is_set() else self._room
                await self._room.wait()
            return
        with self.lock:
            self.counts.rejected += n
        raise QueueFull(
            f"no room for {n} events after waiting {self.block_timeout:g}s; the journal is behind"
        )

    def last_seq(self) -> int:
        """The sequence number of the newest event emitted so far."""
        with self.lock:
            return self.next_seq - 1

    # -- the loop side: assembler, writer, waiters ----------------------------------

    def wake(self) -> None:
        """Run an assembler cycle now (loop thread only)."""
        self._work.set()

    async def wait_for_work(self, within: float) -> None:
        """The assembler's pause: until an event arrives, ``wake``, or ``within`` seconds."""
        if within > 0:
            with anyio.move_on_after(within):
                await self._work.wait()
        self._work = anyio.Event()

    def take(self) -> tuple[deque[Raw], int]:
        """Swap out the items with the drop_oldest debt (the next emit wakes the loop)."""
        with self.lock:
            raws, self.items = self.items, deque()
            self.wake_scheduled = False
            shed, self.shed = self.shed, 0
        return raws, shed

    def take_shed(self) -> int:
        """Take (and clear) only the drop_oldest debt."""
        with self.lock:
            debt, self.shed = self.shed, 0
        return debt

    def release(self, events: int) -> None:
        """``events`` left the pipeline (written, dropped or dead-lettered)."""
        with self.lock:
            self.pending -= events
        self._room.set()

    def low_seq(self) -> int:
        """The oldest sequence number in the inbox, or the next one when it is empty."""
        with self.lock:
            return self.items[0][7] if self.items else self.next_seq

    def progressed(self) -> None:
        """The low-water mark may have moved: wake whoever waits in ``wait_progress``."""
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.set()

    async def wait_progress(self) -> None:
        """Return at the next ``progressed`` (after an assembler cycle or a write)."""
        if self._progress is None:
            self._progress = anyio.Event()
        await self._progress.wait()
