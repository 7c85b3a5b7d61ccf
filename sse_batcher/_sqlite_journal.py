"""SQLiteJournal: the embedded default journal (one file, WAL, group commit).

One writer connection and one reader connection, each an aiosqlite thread. WAL
lets replays run on the reader while the writer commits. Every ``append()`` that
arrives while a transaction is in progress waits for the write lock; the first
of them to get it writes all the waiting appends in one transaction with one
``executemany`` (group commit), because an aiosqlite round trip costs about
60 µs and a transaction per small append would spend most of the time there.

Ids are ``INTEGER PRIMARY KEY AUTOINCREMENT`` values assigned explicitly inside the
transaction: the current sequence is read under the write lock and the rows get
``start+1 .. start+n``. So ids are consecutive, never reused after retention
deletes, and the only gaps are the prefix retention removed.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any, Self

import aiosqlite
import anyio
import anyio.lowlevel
import anyio.to_thread
import orjson
from anyio.abc import TaskGroup, TaskStatus

from ._events import EncodedEvent, Event, Position, StoredEvent
from ._exceptions import BatcherClosed, ConfigError, JournalUnavailable
from ._journal import Resume, TailListener, format_event_id, parse_event_id

__all__ = ["SQLiteJournal"]

logger = logging.getLogger("sse_batcher.journal")

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    data TEXT NOT NULL,
    stored_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS uids (uid TEXT PRIMARY KEY, stored_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS uids_stored_at ON uids (stored_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', '{epoch}');
COMMIT;
"""
# The newest id ever assigned: sqlite_sequence survives deletes, max(id) covers a table
# whose rows were written by something that bypassed AUTOINCREMENT.
_SEQUENCE = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),"
    " coalesce((SELECT max(id) FROM events), 0))"
)
# data is stored as TEXT (so json_extract works on it) without a decode/encode round
# trip in Python: the bytes are cast in SQL and cast back on read, byte-for-byte.
_INSERT = (
    "INSERT INTO events (id, ts, type, source, data, stored_at)"
    " VALUES (?, ?, ?, ?, CAST(? AS TEXT), ?)"
)
_INSERT_UID = "INSERT OR REPLACE INTO uids (uid, stored_at) VALUES (?, ?)"
_SELECT_AFTER = (
    "SELECT id, ts, type, source, CAST(data AS BLOB) FROM events WHERE id > ? ORDER BY id LIMIT ?"
)
_BOUNDS = f"SELECT (SELECT min(id) FROM events), ({_SEQUENCE})"
_DELETE_CHUNK = 5_000
_UID_RETENTION = 3600.0
_CLOSE_TIMEOUT = 10.0
_COUNTERS = """appends transactions rows_written uids_written stream_only
    max_appends_per_transaction last_append_ms failures rows_deleted uids_deleted
    cleanup_runs cleanup_failures listener_errors"""


class _State(Enum):
    UNOPENED = "unopened"
    OPENING = "opening"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(eq=False, slots=True)
class _Append:
    """One append() call waiting for (or taken into) a transaction."""

    events: Sequence[EncodedEvent]
    taken: bool = False
    result: list[StoredEvent] = field(default_factory=list)
    error: BaseException | None = None


class SQLiteJournal:
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
    ) -> None:
        self._path = os.fspath(path)
        if not self._path or self._path == ":memory:" or self._path.startswith("file:"):
            raise ConfigError(f"SQLiteJournal needs a file path, not {self._path!r}")
        if retention_seconds is not None and not retention_seconds > 0:
            raise ConfigError(f"retention_seconds must be > 0 or None, not {retention_seconds!r}")
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int)):
            raise ConfigError(f"max_rows must be an int or None, not {max_rows!r}")
        if max_rows is not None and max_rows < 1:
            raise ConfigError(f"max_rows must be >= 1 or None, not {max_rows}")
        if not cleanup_interval > 0:
            raise ConfigError(f"cleanup_interval must be > 0 seconds, not {cleanup_interval!r}")
        if not 0 <= busy_timeout <= 3600:
            raise ConfigError(f"busy_timeout must be 0..3600 seconds, not {busy_timeout!r}")
        self._retention = retention_seconds
        self._max_rows = max_rows
        self._cleanup_interval = float(cleanup_interval)
        self._busy_timeout = float(busy_timeout)
        self._clock = clock
        self._state = _State.UNOPENED
        self._epoch = ""
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._task_group: TaskGroup | None = None
        self._closing = anyio.Event()
        self._write_lock = anyio.Lock()
        self._cleanup_lock = anyio.Lock()
        self._waiting: list[_Append] = []
        self._listeners: list[tuple[object, TailListener]] = []
        self._counters: dict[str, float] = dict.fromkeys(_COUNTERS.split(), 0)

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

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise BatcherClosed(
                f"SQLiteJournal({self._path!r}) is {self._state.value}; "
                "a journal cannot be reopened, create a new one"
            )
        self._state = _State.OPENING  # refuse a second concurrent __aenter__ as well
        try:
            # aiosqlite's own failed-connect path leaves its thread to report to the
            # event loop later; a plain sqlite3 open in a worker thread fails cleanly first.
            await anyio.to_thread.run_sync(self._preflight)
            self._writer = await self._connect()
            self._epoch = await self._init_schema(self._writer)
            self._reader = await self._connect()
            await self._reader.execute("PRAGMA query_only = 1")
        except (sqlite3.Error, OSError) as exc:
            await self._close_connections()
            self._state = _State.CLOSED
            raise JournalUnavailable(f"cannot open {self._path!r}: {exc}") from exc
        except BaseException:
            await self._close_connections()
            self._state = _State.CLOSED
            raise
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        await self._task_group.start(self._cleanup_loop)
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state is not _State.OPEN:
            return
        self._closing.set()  # run_tail() callers return
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
        # A transaction in progress may itself wait up to busy_timeout for SQLite's lock.
        with anyio.move_on_after(_CLOSE_TIMEOUT + self._busy_timeout, shield=True):
            # Wait for a transaction in progress; appends still queued then fail cleanly.
            async with self._write_lock:
                self._state = _State.CLOSED
                await self._close_connections()
        self._state = _State.CLOSED

    def _preflight(self) -> None:
        sqlite3.connect(self._path, timeout=self._busy_timeout).close()

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: the sqlite3 module issues no implicit BEGIN; we say
        # BEGIN IMMEDIATE ourselves so the write lock is taken before reading the sequence.
        conn = await aiosqlite.connect(self._path, isolation_level=None, timeout=self._busy_timeout)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            mode = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
            if str(mode[0][0]).lower() != "wal":
                logger.warning("%s: journal_mode is %s, not WAL", self._path, mode[0][0])
            await conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            await conn.close()
            raise
        return conn

    @staticmethod
    async def _init_schema(conn: aiosqlite.Connection) -> str:
        await conn.executescript(_SCHEMA.format(epoch=secrets.token_hex(4)))
        rows = list(await conn.execute_fetchall("SELECT value FROM meta WHERE key = 'epoch'"))
        return str(rows[0][0])

    async def _close_connections(self) -> None:
        for name in ("_reader", "_writer"):
            conn: aiosqlite.Connection | None = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                try:
                    await conn.close()
                except Exception:  # the file may be gone; the thread still stops
                    logger.warning("%s: error closing connection", self._path, exc_info=True)

    def _require_open(self) -> None:
        if self._state is not _State.OPEN:
            raise BatcherClosed(
                f"SQLiteJournal({self._path!r}) is {self._state.value}; use it inside `async with`"
            )

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
        self._counters["appends"] += 1
        if not events:
            return []
        request = _Append(events)
        self._waiting.append(request)
        try:
            async with self._write_lock:
                if not request.taken:
                    await self._write_waiting()
        except BaseException:
            if not request.taken:  # cancelled before any transaction took it
                self._waiting.remove(request)
            raise
        if request.error is not None:
            error = request.error
            if isinstance(error, BatcherClosed):
                raise BatcherClosed(str(error))
            raise JournalUnavailable(f"{self._path}: {error}") from error
        return request.result

    async def _write_waiting(self) -> None:
        """Write every waiting append in one transaction, then publish (lock held)."""
        batch, self._waiting = self._waiting, []
        for request in batch:
            request.taken = True
        if self._state is not _State.OPEN or self._writer is None:
            for request in batch:
                request.error = BatcherClosed(f"SQLiteJournal({self._path!r}) is closed")
            return
        # Shielded: the other callers in this group depend on it finishing, and an
        # abandoned aiosqlite call would leave the transaction state unknown.
        with anyio.CancelScope(shield=True):
            started = time.perf_counter()
            try:
                await self._transaction(self._writer, batch)
            except (sqlite3.Error, OSError, ValueError) as exc:
                # ValueError: aiosqlite's "Connection closed" / "no active connection".
                self._counters["failures"] += 1
                logger.warning("%s: append of %d failed: %s", self._path, len(batch), exc)
                for request in batch:
                    request.error = exc
                    request.result = []
                return
            self._counters["last_append_ms"] = (time.perf_counter() - started) * 1000.0
        self._publish(batch)

    async def _transaction(self, writer: aiosqlite.Connection, batch: list[_Append]) -> None:
        rows: list[tuple[int, float, str, str, bytes, float]] = []
        uid_rows: list[tuple[str, float]] = []
        persisted = sum(1 for r in batch for e in r.events if e.persist)
        stored_at = self._clock()
        began = False
        try:
            next_id = 0
            if persisted:
                await writer.execute("BEGIN IMMEDIATE")
                began = True
                next_id = int(next(iter(await writer.execute_fetchall(_SEQUENCE)))[0])
            for request in batch:
                result = request.result = []
                for encoded in request.events:
                    event = encoded.event
                    if not encoded.persist:
                        result.append(StoredEvent(None, None, event, encoded.data_json))
                        continue
                    next_id += 1
                    position = Position(next_id)
                    rows.append(
                        (next_id, event.ts, event.type, event.source, encoded.data_json, stored_at)
                    )
                    if encoded.uids:
                        uid_rows.extend((uid, stored_at) for uid in encoded.uids)
                    result.append(
                        StoredEvent(
                            format_event_id(self._epoch, position, two_part=False),
                            position,
                            event,
                            encoded.data_json,
                        )
                    )
            if began:
                await writer.executemany(_INSERT, rows)
                if uid_rows:
                    await writer.executemany(_INSERT_UID, uid_rows)
                await writer.execute("COMMIT")
                began = False
        finally:
            if began:
                try:
                    await writer.rollback()
                except Exception:
                    logger.warning("%s: rollback failed", self._path, exc_info=True)
        counters = self._counters
        counters["transactions"] += 1 if persisted else 0
        counters["rows_written"] += len(rows)
        counters["uids_written"] += len(uid_rows)
        counters["stream_only"] += sum(len(r.events) for r in batch) - len(rows)
        counters["max_appends_per_transaction"] = max(
            counters["max_appends_per_transaction"], len(batch)
        )

    def _publish(self, batch: list[_Append]) -> None:
        if not self._listeners:
            return
        events = tuple(stored for request in batch for stored in request.result)
        for _token, deliver in tuple(self._listeners):
            try:
                deliver(events)
            except Exception:  # the events are committed; one bad listener must not undo that
                self._counters["listener_errors"] += 1
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
        _, reader = self._conns()
        if limit <= 0:
            return []
        start = 0 if after is None else after.major
        try:
            rows = await reader.execute_fetchall(_SELECT_AFTER, (start, limit))
        except (sqlite3.Error, OSError) as exc:
            raise JournalUnavailable(f"{self._path}: {exc}") from exc
        epoch = self._epoch
        result = []
        for row_id, ts, type_, source, data in rows:
            position = Position(row_id)
            event = Event(type=type_, source=source, data=orjson.loads(data), ts=ts)
            result.append(
                StoredEvent(format_event_id(epoch, position, two_part=False), position, event, data)
            )
        return result

    async def _bounds(self) -> tuple[int | None, int]:
        """(oldest id present or None, newest id ever assigned or 0)."""
        _, reader = self._conns()
        try:
            rows = list(await reader.execute_fetchall(_BOUNDS))
        except (sqlite3.Error, OSError) as exc:
            raise JournalUnavailable(f"{self._path}: {exc}") from exc
        oldest, newest = rows[0]
        return (None if oldest is None else int(oldest)), int(newest)

    async def newest_id(self) -> str | None:
        """The wire id of the newest stored event, None when there is none."""
        _, reader = self._conns()
        try:
            rows = list(await reader.execute_fetchall("SELECT max(id) FROM events"))
        except (sqlite3.Error, OSError) as exc:
            raise JournalUnavailable(f"{self._path}: {exc}") from exc
        newest = rows[0][0]
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
        _, reader = self._conns()
        since = self._clock() - within_seconds
        try:
            rows = await reader.execute_fetchall(
                "SELECT uid FROM uids WHERE stored_at >= ?", (since,)
            )
        except (sqlite3.Error, OSError) as exc:
            raise JournalUnavailable(f"{self._path}: {exc}") from exc
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
                keep_from = await self._first_kept(reader, now)
                deleted = await self._delete_chunks(
                    writer,
                    "DELETE FROM events WHERE id < ? AND id < (SELECT min(id) FROM events) + ?",
                    (keep_from, _DELETE_CHUNK),
                )
                uids = await self._delete_chunks(
                    writer,
                    "DELETE FROM uids WHERE uid IN"
                    " (SELECT uid FROM uids WHERE stored_at < ? LIMIT ?)",
                    (now - _UID_RETENTION, _DELETE_CHUNK),
                )
            except (sqlite3.Error, OSError, ValueError) as exc:
                self._counters["cleanup_failures"] += 1
                raise JournalUnavailable(f"{self._path}: cleanup failed: {exc}") from exc
            self._counters["cleanup_runs"] += 1
            self._counters["rows_deleted"] += deleted
            self._counters["uids_deleted"] += uids
            if deleted:
                logger.info("%s: retention deleted %d events", self._path, deleted)
            return deleted

    async def _first_kept(self, reader: aiosqlite.Connection, now: float) -> int:
        """The smallest id retention keeps: everything below it is deleted."""
        # Age retention deletes a prefix (ids up to the first young row) so that a
        # clock step backwards can never punch a hole in the middle of the journal.
        cutoff = now - self._retention if self._retention is not None else float("-inf")
        rows = list(
            await reader.execute_fetchall(
                "SELECT (SELECT id FROM events WHERE stored_at >= ? ORDER BY id LIMIT 1),"
                " (SELECT max(id) FROM events)",
                (cutoff,),
            )
        )
        first_young, newest = rows[0]
        if newest is None:
            return 0
        keep_from = int(newest) + 1 if first_young is None else int(first_young)
        if self._max_rows is not None:
            keep_from = max(keep_from, int(newest) - self._max_rows + 1)
        return keep_from

    async def _delete_chunks(
        self, writer: aiosqlite.Connection, sql: str, params: tuple[float, int]
    ) -> int:
        total = 0
        while True:
            # One chunk per write-lock hold: appends wait at most one chunk's delete.
            async with self._write_lock:
                if self._state is not _State.OPEN:
                    return total
                with anyio.CancelScope(shield=True):
                    cursor = await writer.execute(sql, params)
                    count = cursor.rowcount
                    await cursor.close()
            total += max(count, 0)
            if count < _DELETE_CHUNK:
                return total
            await anyio.lowlevel.checkpoint()

    async def _cleanup_loop(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        delay = min(self._cleanup_interval, 60.0)
        while True:
            await anyio.sleep(delay)
            delay = self._cleanup_interval
            try:
                await self.cleanup()
            except Exception:
                logger.exception("%s: retention cleanup failed", self._path)

    # -- stats ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for ``/stats`` and ``/metrics`` (a flat dict of numbers)."""
        stats: dict[str, Any] = dict(self._counters)
        for name in ("last_append_ms",):
            stats[name] = round(stats[name], 3)
        stats["listeners"] = len(self._listeners)
        stats["waiting_appends"] = len(self._waiting)
        stats["open"] = 1 if self._state is _State.OPEN else 0
        return stats
