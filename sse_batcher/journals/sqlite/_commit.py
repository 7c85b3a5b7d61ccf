"""Group commit for the SQLite journal: appends that wait together are written together.

Every ``append()`` that arrives while a transaction is in progress waits for the
write lock; the first of them to get it writes all the waiting appends in one
transaction with one ``executemany``, because an aiosqlite round trip costs about
60 µs and a transaction per small append would spend most of the time there.

Ids are ``INTEGER PRIMARY KEY AUTOINCREMENT`` values assigned explicitly inside the
transaction: the current sequence is read under the write lock and the rows get
``start+1 .. start+n``. So ids are consecutive, never reused after retention
deletes, and the only gaps are the prefix retention removed.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiosqlite
import anyio

from sse_batcher._exceptions import BatcherClosed, JournalUnavailable
from sse_batcher.batching._events import EncodedEvent, Position, StoredEvent
from sse_batcher.batching._journal import format_event_id
from sse_batcher.journals._counters import SQLiteCounters
from sse_batcher.journals.sqlite._schema import INSERT, INSERT_UID, SEQUENCE

__all__ = ["GroupCommit"]

logger = logging.getLogger("sse_batcher.journal")


@dataclass(eq=False, slots=True)
class _Append:
    """One append() call waiting for (or taken into) a transaction."""

    events: Sequence[EncodedEvent]
    taken: bool = False
    result: list[StoredEvent] = field(default_factory=list)
    error: BaseException | None = None


class GroupCommit:
    """The appends waiting for a journal's write lock, and the transaction that takes them.

    Args:
        path: the database file, for errors and the log.
        write_lock: the journal's write lock (its retention and ``ping`` take it too).
        writer: the writer connection, or None once the journal is not open.
        epoch: the journal's epoch, for the wire ids.
        clock: Unix time for ``stored_at``.
        counters: the journal's counters, updated in place.
        on_commit: called with each committed group (every append's events, in order),
            write lock held.
    """

    def __init__(
        self,
        *,
        path: str,
        write_lock: anyio.Lock,
        writer: Callable[[], aiosqlite.Connection | None],
        epoch: Callable[[], str],
        clock: Callable[[], float],
        counters: SQLiteCounters,
        on_commit: Callable[[list[list[StoredEvent]]], None],
    ) -> None:
        self._path = path
        self._write_lock = write_lock
        self._get_writer = writer
        self._epoch = epoch
        self._clock = clock
        self._counters = counters
        self._on_commit = on_commit
        self.waiting: list[_Append] = []

    async def append(self, events: Sequence[EncodedEvent]) -> list[StoredEvent]:
        """Write ``events`` (not empty) with the others waiting; see ``SQLiteJournal.append``."""
        request = _Append(events)
        self.waiting.append(request)
        try:
            async with self._write_lock:
                if not request.taken:
                    await self._write_waiting()
        except BaseException:
            if not request.taken:  # cancelled before any transaction took it
                self.waiting.remove(request)
            raise
        if request.error is not None:
            error = request.error
            if isinstance(error, BatcherClosed):
                raise BatcherClosed(str(error))
            raise JournalUnavailable(f"{self._path}: {error}") from error
        return request.result

    async def _write_waiting(self) -> None:
        """Write every waiting append in one transaction, then publish (lock held)."""
        batch, self.waiting = self.waiting, []
        for request in batch:
            request.taken = True
        writer = self._get_writer()
        if writer is None:
            for request in batch:
                request.error = BatcherClosed(f"SQLiteJournal({self._path!r}) is closed")
            return
        # Shielded: the other callers in this group depend on it finishing, and an
        # abandoned aiosqlite call would leave the transaction state unknown.
        with anyio.CancelScope(shield=True):
            started = time.perf_counter()
            try:
                await self._transaction(writer, batch)
            except (sqlite3.Error, OSError, ValueError) as exc:
                # ValueError: aiosqlite's "Connection closed" / "no active connection".
                self._counters.failures += 1
                logger.warning("%s: append of %d failed: %s", self._path, len(batch), exc)
                for request in batch:
                    request.error = exc
                    request.result = []
                return
            self._counters.last_append_ms = (time.perf_counter() - started) * 1000.0
        self._on_commit([request.result for request in batch])

    async def _transaction(self, writer: aiosqlite.Connection, batch: list[_Append]) -> None:
        rows: list[tuple[int, float, str, str, str, bytes, float]] = []
        uid_rows: list[tuple[str, float]] = []
        persisted = sum(1 for r in batch for e in r.events if e.persist)
        stored_at = self._clock()
        epoch = self._epoch()
        began = False
        try:
            next_id = 0
            if persisted:
                await writer.execute("BEGIN IMMEDIATE")
                began = True
                next_id = int(next(iter(await writer.execute_fetchall(SEQUENCE)))[0])
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
                        (
                            next_id,
                            event.ts,
                            event.type,
                            event.source,
                            event.channel,
                            encoded.data_json,
                            stored_at,
                        )
                    )
                    if encoded.uids:
                        uid_rows.extend((uid, stored_at) for uid in encoded.uids)
                    result.append(
                        StoredEvent(
                            format_event_id(epoch, position, two_part=False),
                            position,
                            event,
                            encoded.data_json,
                        )
                    )
            if began:
                await writer.executemany(INSERT, rows)
                if uid_rows:
                    await writer.executemany(INSERT_UID, uid_rows)
                await writer.execute("COMMIT")
                began = False
        finally:
            if began:
                try:
                    await writer.rollback()
                except Exception:
                    logger.warning("%s: rollback failed", self._path, exc_info=True)
        counters = self._counters
        counters.transactions += 1 if persisted else 0
        counters.rows_written += len(rows)
        counters.uids_written += len(uid_rows)
        counters.stream_only += sum(len(r.events) for r in batch) - len(rows)
        counters.max_appends_per_transaction = max(counters.max_appends_per_transaction, len(batch))
