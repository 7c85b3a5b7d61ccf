"""The SQLite journal's tail: every committed row delivered once, in id order, from any process.

One process alone: each commit is handed to the listeners right after it (the
fast path, no read). Several processes sharing the file (``serve --workers``):
the ids are still one sequence, assigned inside each ``BEGIN IMMEDIATE``
transaction, so the rows committed anywhere form a consecutive prefix of ids
(apart from what retention deleted). The tail keeps ``delivered``, the highest id
handed on, and:

```
own commit, first id == delivered + 1, nothing pending ──► deliver at once
own commit after a gap (another process committed in between)
      ──► stream-only events at once; the rows wait in ``pending``
      ──► catch-up: read_after(delivered) up to the first pending id, deliver,
          then the pending rows (no second read of our own rows)
poll every ``poll_interval`` on a plain sqlite3 connection (≈15 µs, on the loop;
after a quiet second: wait for a write to the WAL): newest id > delivered ──► catch-up
```

Every delivery drops ids <= ``delivered``, so a row read back while our own
commit was being handed on is never delivered twice. Stream-only events
(``persist=False``) are not in the file: they reach only this process's
listeners, at once (after a gap, ahead of the stored events of their commit).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence

import anyio
from anyio.abc import TaskStatus

from sse_batcher.batching._events import StoredEvent
from sse_batcher.journals._counters import SQLiteCounters
from sse_batcher.journals.sqlite._schema import SEQUENCE
from sse_batcher.journals.sqlite._wal_watch import open_wal_watch

__all__ = ["OrderedTail"]

logger = logging.getLogger("sse_batcher.journal")

CATCH_UP_PAGE = 1_000
# After a quiet second the poll stops: each check costs 30-200 µs of loop time with
# its wake-up on a shared VM, so 2 ms polling would cost an idle worker 1-4 % of a
# core. It waits for a write to the WAL instead (inotify, ``_wal_watch.py``; a check
# every IDLE_SAFETY_INTERVAL in case the file was replaced), or, without inotify,
# checks every IDLE_INTERVAL.
IDLE_AFTER = 1.0
IDLE_INTERVAL = 0.01
IDLE_SAFETY_INTERVAL = 1.0
_RETRY_DELAYS = (0.01, 0.05, 0.2, 1.0)


class OrderedTail:
    """Hands committed events to ``deliver`` once each, in id order, whoever committed them.

    Args:
        path: the database file (the poll opens its own read-only connection).
        read_after: the journal's ``read_after(after_id, limit)`` on its reader.
        deliver: called with each run of events, in order, on the event loop.
        poll_interval: seconds between checks for rows other processes committed;
            None: only this process writes (own commits still fill any gap).
        counters: the journal's counters (``tail_reads``, ``tail_rows_read``,
            ``tail_errors``), updated in place.
    """

    def __init__(
        self,
        *,
        path: str,
        read_after: Callable[[int, int], Awaitable[list[StoredEvent]]],
        deliver: Callable[[Sequence[StoredEvent]], None],
        poll_interval: float | None,
        counters: SQLiteCounters,
    ) -> None:
        self._path = path
        self._read_after = read_after
        self._deliver = deliver
        self.poll_interval = poll_interval
        self._counters = counters
        self.delivered = 0
        self.pending: dict[int, list[StoredEvent]] = {}
        self._behind = anyio.Event()

    def committed(self, events: Sequence[StoredEvent]) -> None:
        """This process committed ``events`` (its ids consecutive); hand them on in order."""
        first = next((e.position for e in events if e.position is not None), None)
        if first is None:  # stream-only: nothing to order against
            self._deliver(events)
            return
        if not self.pending and first.major == self.delivered + 1:
            last = next(e.position for e in reversed(events) if e.position is not None)
            self.delivered = last.major
            self._deliver(events)
            return
        # Stream-only events go at once: they have no place in the id order to wait for.
        live = [e for e in events if e.position is None]
        if live:
            self._deliver(live)
        rows = [_Row(e) for e in events if e.position is not None]
        rows = [r for r in rows if r.major > self.delivered]  # a catch-up read some already
        if not rows:
            return
        if not self.pending and rows[0].major == self.delivered + 1:
            self._hand_on(rows)
            return
        self.pending[rows[0].major] = [r.event for r in rows]
        self._behind.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Catch up whenever behind (and poll, with ``poll_interval``) until cancelled."""
        async with anyio.create_task_group() as tg:
            if self.poll_interval is not None:
                await tg.start(self._poll, self.poll_interval)
            task_status.started()
            while True:
                await self._behind.wait()
                self._behind = anyio.Event()
                await self._catch_up_retrying()

    async def _poll(self, interval: float, *, task_status: TaskStatus[None]) -> None:
        # A plain connection used on the loop thread: one tiny read costs less than
        # an aiosqlite thread hop. timeout=0: a busy read is retried next tick, the
        # loop never waits on a lock.
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=0)
        watch = open_wal_watch(self._path)
        self._counters.tail_wal_watch = 0 if watch is None else 1
        try:
            conn.execute("PRAGMA query_only = 1")
            task_status.started()
            seen, changed_at = -1, time.monotonic()
            while True:
                quiet = time.monotonic() - changed_at > IDLE_AFTER
                if not quiet:
                    await anyio.sleep(interval)
                    if watch is not None:
                        watch.drain()
                elif watch is None:
                    await anyio.sleep(max(interval, IDLE_INTERVAL))
                else:
                    # Idle: sleep until some process writes the WAL. The write may come
                    # before its commit is visible, so poll closely again from here on.
                    with anyio.move_on_after(IDLE_SAFETY_INTERVAL) as timer:
                        await anyio.wait_readable(watch.fd)
                    if not timer.cancelled_caught:
                        watch.drain()
                        changed_at = time.monotonic()
                try:
                    # fetchall: the statement runs to its end, so no read transaction
                    # stays open to hold back WAL checkpoints.
                    newest = int(conn.execute(SEQUENCE).fetchall()[0][0])
                except sqlite3.Error:
                    continue
                if newest != seen:
                    seen, changed_at = newest, time.monotonic()
                if newest > self.delivered and not self.pending:
                    self._behind.set()
        finally:
            if watch is not None:
                watch.close()
            conn.close()

    async def _catch_up_retrying(self) -> None:
        for delay in (*_RETRY_DELAYS, None):
            try:
                await self._catch_up()
                return
            except Exception:
                self._counters.tail_errors += 1
                if delay is None:
                    raise
                logger.warning("%s: tail read failed; retrying", self._path, exc_info=True)
                await anyio.sleep(delay)

    async def _catch_up(self) -> None:
        """Deliver every row committed after ``delivered`` that is known of, in order."""
        while True:
            self._deliver_pending()
            if self.pending:
                start = min(self.pending)
                # Our rows' ids were taken after everything below them committed:
                # the gap is in the file (unless retention deleted it).
                limit = min(start - self.delivered - 1, CATCH_UP_PAGE)
                rows = await self._read(limit)
                rows = [r for r in rows if r.major < start]
                self._hand_on(rows)
                if len(rows) < limit:  # the rest of the gap was deleted by retention
                    self.delivered = max(self.delivered, start - 1)
                continue
            rows = await self._read(CATCH_UP_PAGE)
            self._hand_on(rows)
            if len(rows) < CATCH_UP_PAGE and not self.pending:
                return

    async def _read(self, limit: int) -> list[_Row]:
        after = self.delivered
        events = await self._read_after(after, limit)
        self._counters.tail_reads += 1
        self._counters.tail_rows_read += len(events)
        # Another delivery may have run while this read waited: keep only what is new.
        return [_Row(e) for e in events if e.position is not None]

    def _hand_on(self, rows: list[_Row]) -> None:
        fresh = [r.event for r in rows if r.major > self.delivered]
        if fresh:
            self.delivered = rows[-1].major
            self._deliver(fresh)

    def _deliver_pending(self) -> None:
        while self.pending:
            start = min(self.pending)
            if start > self.delivered + 1:
                return
            rows = [_Row(e) for e in self.pending.pop(start)]
            self._hand_on(rows)


class _Row:
    """A persisted event and its id, for the catch-up's comparisons."""

    __slots__ = ("event", "major")

    def __init__(self, event: StoredEvent) -> None:
        assert event.position is not None
        self.event = event
        self.major = event.position.major
