"""SQLiteJournal against real database files in tmp_path."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from sse_batcher import (
    BatcherClosed,
    ConfigError,
    EncodedEvent,
    Event,
    InvalidCursor,
    Journal,
    JournalUnavailable,
    Position,
    SQLiteJournal,
    StoredEvent,
)
from sse_batcher.batching._events import encode_data

pytestmark = pytest.mark.anyio


def enc(
    n: int,
    *,
    type: str = "JOB_STARTED",
    persist: bool = True,
    uids: tuple[str, ...] = (),
    data: dict[str, Any] | None = None,
) -> EncodedEvent:
    payload = {"job_id": n} if data is None else data
    event = Event(type, "worker-1", payload, ts=1_700_000_000.0 + n)
    return EncodedEvent(event, encode_data(payload), persist=persist, uids=uids)


def positions(events: Sequence[StoredEvent]) -> list[int]:
    return [e.position.major for e in events if e.position is not None]


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def remove_all(directory: Path) -> None:
    for leftover in directory.iterdir():
        leftover.unlink()


def raw_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT id, type, CAST(data AS BLOB) FROM events ORDER BY id"
        ).fetchall()


async def test_ids_increase_and_come_back_with_events(tmp_path: Path) -> None:
    async with SQLiteJournal(tmp_path / "j.db") as journal:
        first = await journal.append([enc(1), enc(2), enc(3)])
        second = await journal.append([enc(4)])
        assert positions(first) == [1, 2, 3]
        assert positions(second) == [4]
        assert [s.id for s in first] == [f"{journal.epoch}.{n}" for n in (1, 2, 3)]
        assert [s.event.data["job_id"] for s in first + second] == [1, 2, 3, 4]
        assert await journal.newest_id() == f"{journal.epoch}.4"
        replay = await journal.read_after(None, 100)
        assert [(s.id, s.event, s.data_json) for s in replay] == [
            (s.id, s.event, s.data_json) for s in first + second
        ]
        assert journal.stats()["rows_written"] == 4
        assert journal.stats()["transactions"] == 2


async def test_empty_append_writes_nothing(tmp_path: Path) -> None:
    async with SQLiteJournal(tmp_path / "j.db") as journal:
        assert await journal.append([]) == []
        assert journal.stats()["transactions"] == 0
        assert await journal.newest_id() is None


async def test_reopen_continues_sequence_and_keeps_epoch(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with SQLiteJournal(path) as journal:
        await journal.append([enc(1), enc(2)])
        epoch = journal.epoch
    async with SQLiteJournal(path) as journal:
        assert journal.epoch == epoch
        again = await journal.append([enc(3)])
        assert positions(again) == [3]
        assert (await journal.resume(f"{epoch}.2")).after == Position(2)


async def test_recreated_file_gets_new_epoch(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with SQLiteJournal(path) as journal:
        old_id = (await journal.append([enc(1)]))[0].id
        old_epoch = journal.epoch
    remove_all(tmp_path)
    async with SQLiteJournal(path) as journal:
        assert journal.epoch != old_epoch
        assert journal.epoch.isalnum()
        new = await journal.append([enc(2)])
        assert positions(new) == [1]
        assert old_id is not None
        resume = await journal.resume(old_id)
        assert resume.reset == "epoch"
        assert resume.after is None
        assert resume.oldest_id == new[0].id


async def test_concurrent_appends_are_group_committed(tmp_path: Path) -> None:
    callers = 40
    results: dict[int, list[StoredEvent]] = {}
    async with SQLiteJournal(tmp_path / "j.db") as journal:

        async def caller(k: int) -> None:
            results[k] = await journal.append([enc(k * 100 + i) for i in range(3)])

        async with anyio.create_task_group() as tg:
            for k in range(callers):
                tg.start_soon(caller, k)
        stats = journal.stats()
        assert stats["appends"] == callers
        assert stats["transactions"] < callers / 4
        assert stats["max_appends_per_transaction"] > 1
        for k, stored in results.items():
            # Each caller got exactly its own events, consecutive ids in its own order.
            assert [s.event.data["job_id"] for s in stored] == [k * 100 + i for i in range(3)]
            first = positions(stored)[0]
            assert positions(stored) == [first, first + 1, first + 2]
        everything = await journal.read_after(None, 1000)
        assert positions(everything) == list(range(1, 3 * callers + 1))
        by_id = {s.id: s.event.data["job_id"] for stored in results.values() for s in stored}
        assert {s.id: s.event.data["job_id"] for s in everything} == by_id


async def test_stream_only_events_are_published_not_stored(tmp_path: Path) -> None:
    seen: list[list[StoredEvent]] = []
    async with SQLiteJournal(tmp_path / "j.db") as journal, anyio.create_task_group() as tg:
        await tg.start(journal.run_tail, lambda batch: seen.append(list(batch)))
        stored = await journal.append(
            [enc(1), enc(2, type="LOG", persist=False), enc(3), enc(4, type="LOG", persist=False)]
        )
        only_stream = await journal.append([enc(5, type="LOG", persist=False)])
        assert [(s.id is None, s.event.type) for s in stored] == [
            (False, "JOB_STARTED"),
            (True, "LOG"),
            (False, "JOB_STARTED"),
            (True, "LOG"),
        ]
        assert [s.position for s in stored if s.id is None] == [None, None]
        assert positions(stored) == [1, 2]
        assert only_stream[0].id is None
        assert [[s.event.data["job_id"] for s in batch] for batch in seen] == [[1, 2, 3, 4], [5]]
        assert positions(await journal.read_after(None, 10)) == [1, 2]
        assert journal.stats()["stream_only"] == 3
        assert journal.stats()["transactions"] == 1
        tg.cancel_scope.cancel()


async def test_tail_listener_sees_batches_after_commit_in_order(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    seen: list[int] = []
    committed_when_seen: list[bool] = []
    second: list[int] = []

    def listener(batch: Sequence[StoredEvent]) -> None:
        # Another connection must already see the rows: publication follows the commit.
        ids = positions(batch)
        stored = {row[0] for row in raw_rows(path)}
        committed_when_seen.append(set(ids) <= stored)
        seen.extend(ids)

    async with SQLiteJournal(path) as journal:
        async with anyio.create_task_group() as tg:
            await tg.start(journal.run_tail, listener)
            await tg.start(journal.run_tail, lambda batch: second.extend(positions(batch)))
            assert journal.stats()["listeners"] == 2
            async with anyio.create_task_group() as producers:
                for k in range(10):
                    producers.start_soon(journal.append, [enc(k), enc(k + 100)])
            tg.cancel_scope.cancel()
        assert journal.stats()["listeners"] == 0
        assert seen == list(range(1, 21))
        assert second == seen
        assert committed_when_seen and all(committed_when_seen)
        await journal.append([enc(99)])
        assert seen == list(range(1, 21))  # unregistered listeners get nothing more


async def test_failing_listener_does_not_fail_append(tmp_path: Path) -> None:
    good: list[int] = []

    def bad(batch: Sequence[StoredEvent]) -> None:
        raise RuntimeError("listener bug")

    async with SQLiteJournal(tmp_path / "j.db") as journal, anyio.create_task_group() as tg:
        await tg.start(journal.run_tail, bad)
        await tg.start(journal.run_tail, lambda batch: good.extend(positions(batch)))
        assert positions(await journal.append([enc(1)])) == [1]
        assert good == [1]
        assert journal.stats()["listener_errors"] == 1
        tg.cancel_scope.cancel()


async def test_run_tail_returns_when_journal_closes(tmp_path: Path) -> None:
    ended = anyio.Event()
    async with anyio.create_task_group() as tg:
        async with SQLiteJournal(tmp_path / "j.db") as journal:

            async def tail(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                await journal.run_tail(lambda batch: None, task_status=task_status)
                ended.set()

            await tg.start(tail)
        with anyio.fail_after(5):
            await ended.wait()


async def test_read_after_pages(tmp_path: Path) -> None:
    async with SQLiteJournal(tmp_path / "j.db") as journal:
        await journal.append([enc(n) for n in range(25)])
        pages = []
        after: Position | None = None
        while page := await journal.read_after(after, 10):
            pages.append(positions(page))
            after = page[-1].position
        assert pages == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]
        assert positions(await journal.read_after(Position(23), 10)) == [24, 25]
        assert await journal.read_after(None, 0) == []


async def test_retention_by_rows_trims_and_resume_reports_it(tmp_path: Path) -> None:
    async with SQLiteJournal(tmp_path / "j.db", max_rows=10) as journal:
        await journal.append([enc(n) for n in range(25)])
        assert await journal.cleanup() == 15
        assert await journal.cleanup() == 0
        e = journal.epoch
        assert positions(await journal.read_after(None, 100)) == list(range(16, 26))
        trimmed = await journal.resume(f"{e}.3")
        assert (trimmed.after, trimmed.reset, trimmed.oldest_id) == (None, "trimmed", f"{e}.16")
        assert (await journal.resume(f"{e}.15")).after == Position(15)  # next one still there
        assert (await journal.resume(f"{e}.25")).reset is None
        assert journal.stats()["rows_deleted"] == 15
        # Ids are never reused after deletes.
        assert positions(await journal.append([enc(99)])) == [26]


async def test_retention_deletes_in_chunks_beyond_one_chunk(tmp_path: Path) -> None:
    async with SQLiteJournal(tmp_path / "j.db", max_rows=1) as journal:
        await journal.append([enc(n) for n in range(12_001)])
        assert await journal.cleanup() == 12_000
        assert positions(await journal.read_after(None, 10)) == [12_001]


async def test_retention_by_age_with_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    async with SQLiteJournal(tmp_path / "j.db", retention_seconds=500, clock=clock) as journal:
        e = journal.epoch
        await journal.append([enc(n) for n in range(5)])  # ids 1-5 stored at t
        clock.now += 400
        await journal.append([enc(n) for n in range(5)])  # ids 6-10 stored at t+400
        assert await journal.cleanup() == 0
        clock.now += 200  # first five are 600 s old, the others 200 s
        assert await journal.cleanup() == 5
        trimmed = await journal.resume(f"{e}.2")
        assert (trimmed.reset, trimmed.oldest_id) == ("trimmed", f"{e}.6")
        assert (await journal.resume(f"{e}.5")).after == Position(5)
        clock.now += 1000
        assert await journal.cleanup() == 5
        assert await journal.newest_id() is None
        # Everything is gone: the newest id is caught up, an older one was trimmed.
        assert (await journal.resume(f"{e}.10")) == (await journal.resume("10"))
        assert (await journal.resume(f"{e}.10")).after == Position(10)
        gone = await journal.resume(f"{e}.7")
        assert (gone.reset, gone.oldest_id) == ("trimmed", None)
        assert (await journal.resume(f"{e}.11")).reset == "future"
        assert positions(await journal.append([enc(1)])) == [11]


async def test_resume_future_bare_and_junk_cursors(tmp_path: Path) -> None:
    async with SQLiteJournal(tmp_path / "j.db") as journal:
        await journal.append([enc(n) for n in range(5)])
        e = journal.epoch
        future = await journal.resume(f"{e}.6")
        assert (future.after, future.reset, future.oldest_id) == (None, "future", f"{e}.1")
        assert (await journal.resume("999")).reset == "future"
        assert await journal.resume("3") == await journal.resume(f"{e}.3")
        assert (await journal.resume("3")).after == Position(3)
        assert (await journal.resume(f"{e}.0")).after == Position(0)
        assert (await journal.resume(f"{e}.5")).after == Position(5)
        for junk in ["", "abc", f"{e}.x", "-1", f"{e}.1-2", ".5", "a-b.3", f"{e}."]:
            with pytest.raises(InvalidCursor):
                await journal.resume(junk)


async def test_locked_database_raises_unavailable_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    seen: list[int] = []
    async with SQLiteJournal(path, busy_timeout=0.2) as journal, anyio.create_task_group() as tg:
        await tg.start(journal.run_tail, lambda batch: seen.extend(positions(batch)))
        await journal.append([enc(1)])
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            started = time.monotonic()
            with pytest.raises(JournalUnavailable, match="locked"):
                await journal.append([enc(2), enc(3)])
            assert time.monotonic() - started < 3.0
            with pytest.raises(JournalUnavailable):
                await journal.ping()
            assert seen == [1]  # nothing published
            assert journal.stats()["failures"] == 1
            # Reads keep working while another connection holds the write lock (WAL).
            assert positions(await journal.read_after(None, 10)) == [1]
        finally:
            blocker.rollback()
            blocker.close()
        assert positions(await journal.append([enc(2), enc(3)])) == [2, 3]  # no gap
        await journal.ping()
        assert seen == [1, 2, 3]
        tg.cancel_scope.cancel()


async def test_cancelled_appends(tmp_path: Path) -> None:
    """A waiting append that is cancelled is not written; a cancelled writer finishes."""
    path = tmp_path / "j.db"
    async with SQLiteJournal(path, busy_timeout=10) as journal:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            async with anyio.create_task_group() as tg:
                leader_scope, waiter_scope = anyio.CancelScope(), anyio.CancelScope()

                async def append_in(scope: anyio.CancelScope, n: int) -> None:
                    with scope:
                        await journal.append([enc(n)])

                tg.start_soon(append_in, leader_scope, 1)  # takes the lock, waits for SQLite
                await wait_all_tasks_blocked()
                tg.start_soon(append_in, waiter_scope, 2)  # queued behind it
                await wait_all_tasks_blocked()
                assert journal.stats()["waiting_appends"] == 1
                waiter_scope.cancel()
                leader_scope.cancel()
                await wait_all_tasks_blocked()
                assert journal.stats()["waiting_appends"] == 0
                blocker.rollback()
        finally:
            blocker.close()
        assert [row[0] for row in raw_rows(path)] == [1]
        assert positions(await journal.append([enc(3)])) == [2]


async def test_data_is_stored_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    unicode = {"text": "héllo wörld ✓ 日本語 🚀", "escapes": 'quote " backslash \\ nl \n nul \x00'}
    big = {"blob": "x" * 60_000, "ids": list(range(200))}
    odd = b'{"spaced" :  1 ,"e\\u0301":"\xc3\xa9"}'  # not orjson's output: must survive as is
    events = [
        enc(1, data=unicode),
        enc(2, data=big),
        EncodedEvent(Event("ODD", "w", {"spaced": 1, "é": "é"}), odd),
    ]
    async with SQLiteJournal(path) as journal:
        stored = await journal.append(events)
        replay = await journal.read_after(None, 10)
    assert [s.data_json for s in replay] == [e.data_json for e in events]
    assert [s.data_json for s in stored] == [e.data_json for e in events]
    assert replay[0].event.data == unicode
    assert replay[1].event.data == big
    assert [row[2] for row in raw_rows(path)] == [e.data_json for e in events]
    with sqlite3.connect(path) as conn:  # stored as TEXT so SQL's JSON functions work
        assert conn.execute(
            "SELECT json_extract(data, '$.text') FROM events WHERE id = 1"
        ).fetchone() == (unicode["text"],)


async def test_recent_uids_survive_restart_and_are_pruned(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    clock = FakeClock()
    async with SQLiteJournal(path, clock=clock) as journal:
        await journal.append([enc(1, uids=("a", "b")), enc(2, uids=("c",), persist=False)])
        clock.now += 100
        await journal.append([enc(3, uids=("d",))])
        assert await journal.recent_uids(50) == {"d"}
        assert await journal.recent_uids(200) == {"a", "b", "d"}
    async with SQLiteJournal(path, clock=clock) as journal:
        assert await journal.recent_uids(200) == {"a", "b", "d"}
        clock.now += 3550  # a and b are 3650 s old, d 3550 s
        await journal.cleanup()
        assert journal.stats()["uids_deleted"] == 2
        assert await journal.recent_uids(10_000) == {"d"}


async def test_lifecycle_states(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.db")
    assert isinstance(journal, Journal)
    assert journal.epoch == ""
    with pytest.raises(BatcherClosed):
        await journal.append([enc(1)])
    async with journal:
        await journal.append([enc(1)])
    assert journal.stats()["open"] == 0
    for call in (journal.append([enc(2)]), journal.read_after(None, 1), journal.cleanup()):
        with pytest.raises(BatcherClosed):
            await call
    with pytest.raises(BatcherClosed):
        async with journal:
            pass


async def test_open_failure_is_unavailable(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "missing-dir" / "j.db")
    with pytest.raises(JournalUnavailable, match="cannot open"):
        async with journal:
            pass


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retention_seconds": 0},
        {"retention_seconds": -5},
        {"max_rows": 0},
        {"max_rows": 2.5},
        {"cleanup_interval": 0},
        {"busy_timeout": -1},
    ],
)
def test_config_is_validated(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SQLiteJournal(tmp_path / "j.db", **kwargs)


def test_memory_database_is_refused() -> None:
    with pytest.raises(ConfigError):
        SQLiteJournal(":memory:")


async def test_channel_is_stored_and_read_back(tmp_path: Path) -> None:
    payload = {"job_id": 1}
    private = Event("JOB_STARTED", "w", payload, ts=1.0, channel="user.1.jobs")
    async with SQLiteJournal(tmp_path / "j.db") as journal:
        await journal.append([EncodedEvent(private, encode_data(payload)), enc(2)])
    async with SQLiteJournal(tmp_path / "j.db") as journal:
        rows = await journal.read_after(None, 10)
    assert [row.event.channel for row in rows] == ["user.1.jobs", "default"]
    assert b'"channel":"user.1.jobs"' in rows[0].envelope_json()


async def test_a_journal_from_before_channels_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the version 1 schema, as released
        conn.executescript(
            """
            CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,
                type TEXT NOT NULL, source TEXT NOT NULL, data TEXT NOT NULL,
                stored_at REAL NOT NULL);
            CREATE TABLE uids (uid TEXT PRIMARY KEY, stored_at REAL NOT NULL) WITHOUT ROWID;
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '1'), ('epoch', 'cafe0001');
            INSERT INTO events (ts, type, source, data, stored_at)
                VALUES (1.0, 'JOB_STARTED', 'old', '{"job_id": 1}', 1.0);
            """
        )
    payload = {"job_id": 2}
    new = Event("JOB_STARTED", "new", payload, ts=2.0, channel="user.2")
    async with SQLiteJournal(path) as journal:
        assert journal.epoch == "cafe0001"  # same journal: cursors stay valid
        await journal.append([EncodedEvent(new, encode_data(payload))])
        rows = await journal.read_after(None, 10)
    assert [(r.id, r.event.channel) for r in rows] == [
        ("cafe0001.1", "default"),
        ("cafe0001.2", "user.2"),
    ]
    with sqlite3.connect(path) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == ("2",)
