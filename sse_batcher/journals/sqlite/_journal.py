"""SQLiteJournal: the embedded default journal (one file, WAL, group commit).

One writer connection and one reader connection, each an aiosqlite thread. WAL
lets replays run on the reader while the writer commits. Appends that arrive
while a transaction is in progress are written together in the next one: group
commit, in ``_sqlite_commit.py``, which also says how ids are assigned. The
tables and connections are in ``_sqlite_schema.py``, retention (deleting a
prefix of the ids) in ``_sqlite_retention.py``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import aiosqlite
import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from sse_batcher._exceptions import BatcherClosed, ConfigError, JournalUnavailable
from sse_batcher._lifecycle import Resource
from sse_batcher.batching._events import EncodedEvent, Position, StoredEvent
from sse_batcher.batching._journal import Resume, TailListener, format_event_id, parse_event_id
from sse_batcher.journals._counters import SQLiteCounters
from sse_batcher.journals.sqlite._commit import GroupCommit
from sse_batcher.journals.sqlite._retention import Retention
from sse_batcher.journals.sqlite._schema import (
    BOUNDS,
    SELECT_AFTER,
    SEQUENCE,
    close_quietly,
    connect,
    init_schema,
    preflight,
    stored_events,
)
from sse_batcher.journals.sqlite._tail import OrderedTail

__all__ = ["SQLiteJournal"]

logger = logging.getLogger("sse_batcher.journal")

_CLOSE_TIMEOUT = 10.0


class SQLiteJournal(Resource):
    """The embedded journal: a SQLite file in WAL mode, written with group commit.

    Use it as ``async with SQLiteJournal("events.db") as journal:``; it starts a
    retention task that runs every ``cleanup_interval`` seconds (the first run
    ``min(cleanup_interval, 60)`` seconds after opening) and can be run by hand
    with :meth:`cleanup`. A journal cannot be reopened once closed.

    Args:
        path: the database file (created with its tables when missing).
        retention_seconds: delete events stored longer ago than this; None keeps them.
        max_rows: keep at most this many events (the oldest go first); None: no limit.
        cleanup_interval: seconds between retention runs.
        busy_timeout: seconds a write waits for another connection's lock before
            ``append`` raises ``JournalUnavailable``.
        clock: Unix time source for ``stored_at`` and retention (inject it in tests).
        tail_poll_interval: seconds between checks for rows that other processes
            sharing the file committed (``serve --workers``); None when this process
            is the only writer. Either way listeners get every row once, in id order.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention_seconds: float | None = 10 * 86400,
        max_rows: int | None = None,
        cleanup_interval: float = 3600.0,
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        tail_poll_interval: float | None = None,
    ) -> None:
        self._path = os.fspath(path)
        if not self._path or self._path == ":memory:" or self._path.startswith("file:"):
            raise ConfigError(f"SQLiteJournal needs a file path, not {self._path!r}")
        self._retention = Retention(
            retention_seconds=retention_seconds,
            max_rows=max_rows,
            cleanup_interval=cleanup_interval,
        )
        if not 0 <= busy_timeout <= 3600:
            raise ConfigError(f"busy_timeout must be 0..3600 seconds, not {busy_timeout!r}")
        self._busy_timeout = float(busy_timeout)
        if tail_poll_interval is not None and not 0 < tail_poll_interval <= 60:
            raise ConfigError(
                f"tail_poll_interval must be 0..60 seconds or None, not {tail_poll_interval!r}"
            )
        self._clock = clock
        self._shut = False  # set under the write lock at close: appends then fail cleanly
        self._epoch = ""
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._closing = anyio.Event()
        self._write_lock = anyio.Lock()
        self._cleanup_lock = anyio.Lock()
        self._counters = SQLiteCounters()
        self._commits = GroupCommit(
            path=self._path,
            write_lock=self._write_lock,
            writer=lambda: self._writer if self._is_open() else None,
            epoch=lambda: self._epoch,
            clock=clock,
            counters=self._counters,
            on_commit=self._committed,
        )
        self._listeners: list[tuple[object, TailListener]] = []
        self._tail = OrderedTail(
            path=self._path,
            read_after=lambda after, limit: self.read_after(Position(after), limit),
            deliver=self._publish,
            poll_interval=tail_poll_interval,
            counters=self._counters,
        )

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def epoch(self) -> str:
        """The database's token; a deleted and recreated file gets a new one.

        Empty until the journal is opened. (Not an error: ``isinstance(x, Journal)``
        reads every protocol attribute.)
        """
        return self._epoch

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def _describe(self) -> str:
        return f"SQLiteJournal({self._path!r})"

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        try:
            # aiosqlite's own failed-connect path leaves its thread to report to the
            # event loop later; a plain sqlite3 open in a worker thread fails cleanly first.
            await anyio.to_thread.run_sync(preflight, self._path, self._busy_timeout)
            self._writer = await connect(self._path, self._busy_timeout)
            self._epoch = await init_schema(self._writer)
            self._reader = await connect(self._path, self._busy_timeout)
            await self._reader.execute("PRAGMA query_only = 1")
            # The tail hands on what is committed from now on (by any process).
            newest = list(await self._reader.execute_fetchall(SEQUENCE))
            self._tail.delivered = int(newest[0][0])
        except (sqlite3.Error, OSError) as exc:
            await self._close_connections()
            raise JournalUnavailable(f"cannot open {self._path!r}: {exc}") from exc
        except BaseException:
            await self._close_connections()
            raise
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self._retention.run, self.cleanup, self._path)
                await tg.start(self._tail.run)
                yield
                self._closing.set()  # run_tail() callers return
                tg.cancel_scope.cancel()
        finally:
            # A transaction in progress may itself wait up to busy_timeout for SQLite's lock.
            with anyio.move_on_after(_CLOSE_TIMEOUT + self._busy_timeout, shield=True):
                # Wait for a transaction in progress; appends still queued then fail cleanly.
                async with self._write_lock:
                    self._shut = True
                    await self._close_connections()
            self._shut = True

    async def _close_connections(self) -> None:
        for name in ("_reader", "_writer"):
            conn: aiosqlite.Connection | None = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                await close_quietly(conn, self._path)

    def _is_open(self) -> bool:
        return self.is_open and not self._shut

    def _require_open(self) -> None:
        if self._shut:  # closing: the connections are gone or going
            raise BatcherClosed(f"{self._describe()} is closed; use it inside `async with`")
        super()._require_open()

    def _conns(self) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        self._require_open()
        assert self._writer is not None and self._reader is not None
        return self._writer, self._reader

    # -- append (group commit) ---------------------------------------------------------

    async def append(self, events: Sequence[EncodedEvent]) -> list[StoredEvent]:
        """Store the persisted events in one transaction and publish all of them.

        Appends that arrive while a transaction is in progress are written together
        in the next one; each caller gets back exactly its own events, in order,
        stream-only ones with ``id=None``. Listeners are called after the commit.

        Args:
            events: encoded events; those with ``persist=False`` are published only.

        Raises:
            JournalUnavailable: the write failed (locked, I/O error, disk full, read-only);
                nothing was stored or published.
            BatcherClosed: the journal is not open.
        """
        self._require_open()
        self._counters.appends += 1
        if not events:
            return []
        return await self._commits.append(events)

    def _committed(self, results: list[list[StoredEvent]]) -> None:
        self._tail.committed(tuple(stored for result in results for stored in result))

    def _publish(self, events: Sequence[StoredEvent]) -> None:
        if not self._listeners:
            return
        for _token, deliver in tuple(self._listeners):
            try:
                deliver(events)
            except Exception:  # the events are committed; one bad listener must not undo that
                self._counters.listener_errors += 1
                logger.exception("%s: tail listener %r failed", self._path, deliver)

    async def run_tail(
        self, deliver: TailListener, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Call ``deliver`` with every batch appended from now on, until cancelled.

        ``deliver`` runs on the event loop right after each commit and must not block.
        Returns when the journal closes.

        Args:
            deliver: called with each batch (a sequence of StoredEvent, journal order).
            task_status: ``started()`` is called once ``deliver`` is registered.
        """
        self._require_open()
        entry = (object(), deliver)
        self._listeners.append(entry)
        try:
            task_status.started()
            await self._closing.wait()
        finally:
            self._listeners.remove(entry)

    # -- reads ----------------------------------------------------------------------------

    async def read_after(self, after: Position | None, limit: int) -> list[StoredEvent]:
        """Durable events with id > ``after`` (None: from the oldest), oldest first.

        Args:
            after: the position already seen, or None.
            limit: at most this many events.
        """
        self._require_open()
        if limit <= 0:
            return []
        start = 0 if after is None else after.major
        return stored_events(self._epoch, await self._query(SELECT_AFTER, (start, limit)))

    async def _query(self, sql: str, params: tuple[float, ...] = ()) -> list[Any]:
        """Rows of one read on the reader connection; SQLite errors as JournalUnavailable."""
        _, reader = self._conns()
        try:
            return list(await reader.execute_fetchall(sql, params))
        except (sqlite3.Error, OSError) as exc:
            raise JournalUnavailable(f"{self._path}: {exc}") from exc

    async def _bounds(self) -> tuple[int | None, int]:
        """(oldest id present or None, newest id ever assigned or 0)."""
        oldest, newest = (await self._query(BOUNDS))[0]
        return (None if oldest is None else int(oldest)), int(newest)

    async def newest_id(self) -> str | None:
        """The wire id of the newest stored event, None when there is none."""
        newest = (await self._query("SELECT max(id) FROM events"))[0][0]
        if newest is None:
            return None
        return format_event_id(self._epoch, Position(int(newest)), two_part=False)

    async def resume(self, cursor: str) -> Resume:
        """Decide where a subscriber holding ``cursor`` resumes.

        Args:
            cursor: a wire id (``"<epoch>.<n>"``, or a bare ``"<n>"`` of this epoch).

        Raises:
            InvalidCursor: the text is not an id.
        """
        epoch, position = parse_event_id(cursor, two_part=False)
        self._require_open()
        oldest, newest = await self._bounds()
        oldest_id = (
            None
            if oldest is None
            else format_event_id(self._epoch, Position(oldest), two_part=False)
        )
        if epoch is not None and epoch != self._epoch:
            return Resume(after=None, reset="epoch", oldest_id=oldest_id)
        if position.major > newest:
            return Resume(after=None, reset="future", oldest_id=oldest_id)
        # Ids are consecutive apart from the prefix retention deleted, so the cursor is
        # served exactly when the event after it is still there (or none followed it).
        first_missing = oldest if oldest is not None else newest + 1
        if position.major + 1 < first_missing:
            return Resume(after=None, reset="trimmed", oldest_id=oldest_id)
        return Resume(after=position)

    async def recent_uids(self, within_seconds: float) -> set[str]:
        """Idempotency keys stored in the last ``within_seconds`` (kept for one hour).

        Args:
            within_seconds: how far back to look.
        """
        self._require_open()
        since = self._clock() - within_seconds
        rows = await self._query("SELECT uid FROM uids WHERE stored_at >= ?", (since,))
        return {str(row[0]) for row in rows}

    async def ping(self) -> None:
        """Check the reader answers and the writer can take the write lock.

        Raises:
            JournalUnavailable: either check failed (within ``busy_timeout``).
        """
        writer, reader = self._conns()
        try:
            await reader.execute_fetchall("SELECT 1 FROM meta LIMIT 1")
            async with self._write_lock:
                with anyio.CancelScope(shield=True):
                    await writer.execute("BEGIN IMMEDIATE")
                    await writer.execute("ROLLBACK")
        except (sqlite3.Error, OSError, ValueError) as exc:
            raise JournalUnavailable(f"{self._path}: {exc}") from exc

    # -- retention ------------------------------------------------------------------------

    async def cleanup(self) -> int:
        """Apply retention now: delete events older than ``retention_seconds`` and
        beyond ``max_rows`` (oldest first, in chunks), and uids older than an hour.

        Returns:
            How many events were deleted.

        Raises:
            JournalUnavailable: a delete failed (what was deleted before stays deleted).
        """
        writer, reader = self._conns()
        async with self._cleanup_lock:
            now = self._clock()
            try:
                deleted, uids = await self._retention.apply(
                    writer, reader, now, write_lock=self._write_lock, is_open=self._is_open
                )
            except (sqlite3.Error, OSError, ValueError) as exc:
                self._counters.cleanup_failures += 1
                raise JournalUnavailable(f"{self._path}: cleanup failed: {exc}") from exc
            self._counters.cleanup_runs += 1
            self._counters.rows_deleted += deleted
            self._counters.uids_deleted += uids
            if deleted:
                logger.info("%s: retention deleted %d events", self._path, deleted)
            return deleted

    # -- stats ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for ``/stats`` and ``/metrics`` (a flat dict of numbers)."""
        stats: dict[str, Any] = asdict(self._counters)
        for name in ("last_append_ms",):
            stats[name] = round(stats[name], 3)
        stats["listeners"] = len(self._listeners)
        stats["waiting_appends"] = len(self._commits.waiting)
        stats["open"] = 1 if self.is_open else 0
        return stats
