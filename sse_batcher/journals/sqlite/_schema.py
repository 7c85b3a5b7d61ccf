"""The SQLite journal's file: its tables, the statements on them, and its connections.

Ids are ``INTEGER PRIMARY KEY AUTOINCREMENT`` values that the journal assigns
explicitly (see ``_sqlite_journal.py``); ``SEQUENCE`` is where the next one starts.
Every connection runs in WAL mode with ``synchronous = NORMAL`` and the journal's
busy timeout.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Iterable
from typing import Any

import aiosqlite
import orjson

from sse_batcher.batching._events import Event, Position, StoredEvent
from sse_batcher.batching._journal import format_event_id

__all__ = [
    "BOUNDS",
    "INSERT",
    "INSERT_UID",
    "SCHEMA_VERSION",
    "SELECT_AFTER",
    "SEQUENCE",
    "close_quietly",
    "connect",
    "init_schema",
    "preflight",
    "stored_events",
]

logger = logging.getLogger("sse_batcher.journal")

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    channel TEXT NOT NULL DEFAULT 'default',
    data TEXT NOT NULL,
    stored_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS uids (uid TEXT PRIMARY KEY, stored_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS uids_stored_at ON uids (stored_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{version}');
INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', '{epoch}');
COMMIT;
"""
# The newest id ever assigned: sqlite_sequence survives deletes, max(id) covers a table
# whose rows were written by something that bypassed AUTOINCREMENT.
SEQUENCE = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),"
    " coalesce((SELECT max(id) FROM events), 0))"
)
# data is stored as TEXT (so json_extract works on it) without a decode/encode round
# trip in Python: the bytes are cast in SQL and cast back on read, byte-for-byte.
INSERT = (
    "INSERT INTO events (id, ts, type, source, channel, data, stored_at)"
    " VALUES (?, ?, ?, ?, ?, CAST(? AS TEXT), ?)"
)
INSERT_UID = "INSERT OR REPLACE INTO uids (uid, stored_at) VALUES (?, ?)"
SELECT_AFTER = (
    "SELECT id, ts, type, source, channel, CAST(data AS BLOB)"
    " FROM events WHERE id > ? ORDER BY id LIMIT ?"
)
SCHEMA_VERSION = 2
# Version 1 had no channel column: every event it stored was on the default channel.
# ADD COLUMN with a constant default rewrites no rows (SQLite keeps the default in
# the schema and reads it for old rows), so the migration is instant on any size.
_MIGRATE_TO_2 = """
BEGIN IMMEDIATE;
ALTER TABLE events ADD COLUMN channel TEXT NOT NULL DEFAULT 'default';
UPDATE meta SET value = '2' WHERE key = 'schema_version';
COMMIT;
"""
BOUNDS = f"SELECT (SELECT min(id) FROM events), ({SEQUENCE})"


def preflight(path: str, busy_timeout: float) -> None:
    """Open and close the file with plain sqlite3, to fail early and cleanly (blocking)."""
    sqlite3.connect(path, timeout=busy_timeout).close()


async def connect(path: str, busy_timeout: float) -> aiosqlite.Connection:
    """One connection in WAL mode, autocommit, waiting ``busy_timeout`` for locks."""
    # isolation_level=None: the sqlite3 module issues no implicit BEGIN; we say
    # BEGIN IMMEDIATE ourselves so the write lock is taken before reading the sequence.
    conn = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        mode = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
        if str(mode[0][0]).lower() != "wal":
            logger.warning("%s: journal_mode is %s, not WAL", path, mode[0][0])
        await conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        await conn.close()
        raise
    return conn


async def init_schema(conn: aiosqlite.Connection) -> str:
    """Create the tables when missing (a new file gets a new epoch), migrate an older
    file to the current schema; return the epoch."""
    await conn.executescript(_SCHEMA.format(epoch=secrets.token_hex(4), version=SCHEMA_VERSION))
    columns = {row[1] for row in await conn.execute_fetchall("PRAGMA table_info(events)")}
    if "channel" not in columns:
        logger.info("migrating the journal to schema version 2 (channels)")
        try:
            await conn.executescript(_MIGRATE_TO_2)
        except sqlite3.OperationalError as exc:
            # Another process migrated it between our check and our write lock.
            if "duplicate column" not in str(exc):
                raise
            await conn.execute("ROLLBACK")
    rows = list(await conn.execute_fetchall("SELECT value FROM meta WHERE key = 'epoch'"))
    return str(rows[0][0])


async def close_quietly(conn: aiosqlite.Connection, path: str) -> None:
    """Close ``conn``, logging (not raising) an error."""
    try:
        await conn.close()
    except Exception:  # the file may be gone; the thread still stops
        logger.warning("%s: error closing connection", path, exc_info=True)


def stored_events(epoch: str, rows: Iterable[Any]) -> list[StoredEvent]:
    """Rows of ``SELECT_AFTER`` as stored events with their wire ids."""
    result = []
    for row_id, ts, type_, source, channel, data in rows:
        position = Position(row_id)
        event = Event(type=type_, source=source, data=orjson.loads(data), ts=ts, channel=channel)
        result.append(
            StoredEvent(format_event_id(epoch, position, two_part=False), position, event, data)
        )
    return result
