"""Retention for the SQLite journal: which events and uids go, and the deletes that do it.

Events go by age (``retention_seconds``) and by count (``max_rows``), always as a
prefix of the id sequence, so a resuming subscriber only ever finds a "trimmed"
start and never a hole. Deletes run in chunks, one chunk per hold of the
journal's write lock, so appends never wait long behind a large cleanup.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aiosqlite
import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from sse_batcher._exceptions import ConfigError

__all__ = ["DELETE_CHUNK", "UID_RETENTION", "Retention"]

logger = logging.getLogger("sse_batcher.journal")

DELETE_CHUNK = 5_000
UID_RETENTION = 3600.0

_DELETE_EVENTS = "DELETE FROM events WHERE id < ? AND id < (SELECT min(id) FROM events) + ?"
_DELETE_UIDS = "DELETE FROM uids WHERE uid IN (SELECT uid FROM uids WHERE stored_at < ? LIMIT ?)"


class Retention:
    """One journal's retention settings (validated) and the passes that apply them.

    Args:
        retention_seconds: delete events stored longer ago than this; None keeps them.
        max_rows: keep at most this many events (the oldest go first); None: no limit.
        cleanup_interval: seconds between retention runs.

    Raises:
        ConfigError: a setting is out of range.
    """

    def __init__(
        self, *, retention_seconds: float | None, max_rows: int | None, cleanup_interval: float
    ) -> None:
        if retention_seconds is not None and not retention_seconds > 0:
            raise ConfigError(f"retention_seconds must be > 0 or None, not {retention_seconds!r}")
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int)):
            raise ConfigError(f"max_rows must be an int or None, not {max_rows!r}")
        if max_rows is not None and max_rows < 1:
            raise ConfigError(f"max_rows must be >= 1 or None, not {max_rows}")
        if not cleanup_interval > 0:
            raise ConfigError(f"cleanup_interval must be > 0 seconds, not {cleanup_interval!r}")
        self.retention_seconds = retention_seconds
        self.max_rows = max_rows
        self.cleanup_interval = float(cleanup_interval)

    async def apply(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        now: float,
        *,
        write_lock: anyio.Lock,
        is_open: Callable[[], bool],
    ) -> tuple[int, int]:
        """One pass: delete old events (oldest first, in chunks), then uids older than an hour.

        Args:
            writer: the journal's writer connection.
            reader: the journal's reader connection.
            now: Unix time of the pass.
            write_lock: the journal's write lock, held for one chunk at a time.
            is_open: False once the journal closes; the pass then stops early.

        Returns:
            (events deleted, uids deleted).

        Raises:
            sqlite3.Error, OSError, ValueError: a delete failed (what was deleted
                before stays deleted).
        """
        keep_from = await self.first_kept(reader, now)
        deleted = await _delete_chunks(
            writer, _DELETE_EVENTS, (keep_from, DELETE_CHUNK), write_lock, is_open
        )
        uids = await _delete_chunks(
            writer, _DELETE_UIDS, (now - UID_RETENTION, DELETE_CHUNK), write_lock, is_open
        )
        return deleted, uids

    async def first_kept(self, reader: aiosqlite.Connection, now: float) -> int:
        """The smallest id retention keeps: everything below it is deleted."""
        # Age retention deletes a prefix (ids up to the first young row) so that a
        # clock step backwards can never punch a hole in the middle of the journal.
        retention = self.retention_seconds
        cutoff = now - retention if retention is not None else float("-inf")
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
        if self.max_rows is not None:
            keep_from = max(keep_from, int(newest) - self.max_rows + 1)
        return keep_from

    async def run(
        self, cleanup: Callable[[], Awaitable[object]], path: str, *, task_status: TaskStatus[None]
    ) -> None:
        """Call ``cleanup`` every ``cleanup_interval`` seconds (the first time after
        ``min(cleanup_interval, 60)``), logging its failures, until cancelled.

        Args:
            cleanup: the journal's ``cleanup``.
            path: the database file, for the log.
            task_status: ``started()`` at once.
        """
        task_status.started()
        delay = min(self.cleanup_interval, 60.0)
        while True:
            await anyio.sleep(delay)
            delay = self.cleanup_interval
            try:
                await cleanup()
            except Exception:
                logger.exception("%s: retention cleanup failed", path)


async def _delete_chunks(
    writer: aiosqlite.Connection,
    sql: str,
    params: tuple[float, int],
    write_lock: anyio.Lock,
    is_open: Callable[[], bool],
) -> int:
    total = 0
    while True:
        # One chunk per write-lock hold: appends wait at most one chunk's delete.
        async with write_lock:
            if not is_open():
                return total
            with anyio.CancelScope(shield=True):
                cursor = await writer.execute(sql, params)
                count = cursor.rowcount
                await cursor.close()
        total += max(count, 0)
        if count < DELETE_CHUNK:
            return total
        await anyio.lowlevel.checkpoint()
