"""The journals' counters: typed, owned by the journal, updated by its parts.

``stats()`` returns them as a flat dict (``dataclasses.asdict``), so the keys of
``/stats`` and the metrics built from them do not change with the representation.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JournalCounters", "RedisCounters", "SQLiteCounters"]


@dataclass(slots=True)
class JournalCounters:
    """What every journal counts, under the same names."""

    appends: int = 0
    transactions: int = 0
    rows_written: int = 0
    uids_written: int = 0
    stream_only: int = 0
    failures: int = 0
    rows_deleted: int = 0
    uids_deleted: int = 0
    cleanup_runs: int = 0
    cleanup_failures: int = 0
    listener_errors: int = 0


@dataclass(slots=True)
class SQLiteCounters(JournalCounters):
    """SQLite's own: group commit's widest transaction, the last append's time, and
    the tail's reads of rows other processes committed."""

    max_appends_per_transaction: int = 0
    last_append_ms: float = 0.0
    tail_reads: int = 0  # reads of rows other processes committed (serve --workers)
    tail_rows_read: int = 0
    tail_errors: int = 0
    tail_wal_watch: int = 0  # 1 when idle workers wait on inotify instead of a timer


@dataclass(slots=True)
class RedisCounters(JournalCounters):
    """Redis's own: the stream's epoch and the tail."""

    streams_created: int = 0
    epoch_changes: int = 0
    tail_delivered: int = 0
    tail_batches: int = 0
    tail_reconnects: int = 0
    live_received: int = 0
