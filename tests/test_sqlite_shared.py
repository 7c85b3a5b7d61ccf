"""Several SQLiteJournals (and processes) sharing one file: unique ids, every row once, in order."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import orjson
import pytest

from sse_batcher import EncodedEvent, Event, SQLiteJournal, StoredEvent
from sse_batcher.batching._events import encode_data

pytestmark = pytest.mark.anyio

WRITER = Path(__file__).with_name("shared_journal_writer.py")


def enc(n: int, *, persist: bool = True, source: str = "w") -> EncodedEvent:
    return EncodedEvent(
        Event("JOB_STARTED", source, {"job_id": n}), encode_data({"job_id": n}), persist=persist
    )


class Recorder:
    """A tail listener that records ids and lets a test await a count."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.live: list[int] = []
        self._want = 0
        self._reached = anyio.Event()

    def __call__(self, events: Sequence[StoredEvent]) -> None:
        for event in events:
            if event.position is None:
                self.live.append(event.event.data["job_id"])
            else:
                self.ids.append(event.position.major)
        if len(self.ids) >= self._want:
            self._reached.set()

    async def wait_for(self, count: int) -> None:
        self._want = count
        if len(self.ids) < count:
            self._reached = anyio.Event()
            with anyio.fail_after(10):
                await self._reached.wait()


async def test_two_journals_each_deliver_every_row_once_in_id_order(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    first, second = Recorder(), Recorder()
    async with (
        SQLiteJournal(db, tail_poll_interval=0.002) as a,
        SQLiteJournal(db, tail_poll_interval=0.002) as b,
        anyio.create_task_group() as tg,
    ):
        await tg.start(a.run_tail, first)
        await tg.start(b.run_tail, second)
        returned: list[int] = []

        async def writer(journal: SQLiteJournal, batches: int) -> None:
            for n in range(batches):
                stored = await journal.append([enc(n) for _ in range(1 + n % 4)])
                returned.extend(e.position.major for e in stored if e.position is not None)

        async with anyio.create_task_group() as writers:
            for journal in (a, b, a, b):
                writers.start_soon(writer, journal, 100)
        total = 4 * sum(1 + n % 4 for n in range(100))
        await first.wait_for(total)
        await second.wait_for(total)
        tg.cancel_scope.cancel()
    assert sorted(returned) == list(range(1, total + 1))  # unique across journals
    assert first.ids == list(range(1, total + 1))
    assert second.ids == list(range(1, total + 1))
    assert a.stats()["tail_rows_read"] > 0 and b.stats()["tail_rows_read"] > 0


async def test_a_gap_before_an_own_commit_is_read_first_even_without_polling(
    tmp_path: Path,
) -> None:
    db = tmp_path / "events.db"
    seen = Recorder()
    async with SQLiteJournal(db) as a, SQLiteJournal(db) as b, anyio.create_task_group() as tg:
        await tg.start(a.run_tail, seen)
        await b.append([enc(1), enc(2), enc(3)])
        await a.append([enc(4), enc(5, persist=False), enc(6)])
        await seen.wait_for(5)
        tg.cancel_scope.cancel()
    assert seen.ids == [1, 2, 3, 4, 5]
    assert seen.live == [5]  # stream-only: handed on at once, to this journal's listeners only
    assert a.stats()["tail_rows_read"] == 3  # only the gap was read back, not our own rows


async def test_rows_another_writer_commits_arrive_by_polling(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    seen = Recorder()
    async with (
        SQLiteJournal(db, tail_poll_interval=0.002) as a,
        SQLiteJournal(db) as b,
        anyio.create_task_group() as tg,
    ):
        await tg.start(a.run_tail, seen)
        await b.append([enc(1), enc(2)])
        await seen.wait_for(2)
        await b.append([enc(3, persist=False)])  # stream-only stays in b's process
        await b.append([enc(4)])
        await seen.wait_for(3)
        tg.cancel_scope.cancel()
    assert seen.ids == [1, 2, 3]
    assert seen.live == []


async def test_a_journal_opened_late_starts_after_what_is_already_there(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    seen = Recorder()
    async with SQLiteJournal(db, tail_poll_interval=0.002) as a:
        await a.append([enc(1), enc(2)])
        async with (
            SQLiteJournal(db, tail_poll_interval=0.002) as b,
            anyio.create_task_group() as tg,
        ):
            await tg.start(b.run_tail, seen)
            await a.append([enc(3)])
            await seen.wait_for(1)
            tg.cancel_scope.cancel()
    assert seen.ids == [3]


def test_processes_get_unique_ids_and_each_tail_sees_all_rows_in_order(tmp_path: Path) -> None:
    db = str(tmp_path / "events.db")
    batches = 150
    per_process = sum(1 + n % 5 for n in range(batches))
    total = 3 * per_process
    procs = [
        subprocess.Popen(
            [sys.executable, str(WRITER), db, f"p{i}", str(batches), str(total)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:  # release them together so their transactions interleave
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [orjson.loads(proc.communicate(timeout=60)[0]) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    appended = sorted(i for result in results for i in result["appended"])
    assert appended == list(range(1, total + 1))
    for result in results:
        assert len(result["appended"]) == per_process
        assert result["delivered"] == list(range(1, total + 1))
    # The processes did interleave (otherwise this test proves little).
    assert any(
        r["appended"] != list(range(r["appended"][0], r["appended"][0] + per_process))
        for r in results
    )


@pytest.mark.parametrize("seed", range(3))
async def test_three_journals_with_stream_only_events_in_random_interleavings(
    tmp_path: Path, seed: int
) -> None:
    import random

    rng = random.Random(seed)
    db = tmp_path / "events.db"
    recorders = [Recorder() for _ in range(3)]
    plans = [
        [[rng.random() < 0.2 for _ in range(rng.randint(1, 6))] for _ in range(60)]
        for _ in range(3)
    ]
    async with (
        SQLiteJournal(db, tail_poll_interval=0.001) as a,
        SQLiteJournal(db, tail_poll_interval=0.003) as b,
        SQLiteJournal(db) as c,  # no polling: gaps before its own commits still fill
        anyio.create_task_group() as tg,
    ):
        journals = (a, b, c)
        for journal, recorder in zip(journals, recorders, strict=True):
            await tg.start(journal.run_tail, recorder)

        async def writer(k: int) -> None:
            for n, batch in enumerate(plans[k]):
                events = [enc(1000 * k + n, persist=not live) for live in batch]
                await journals[k].append(events)
                if rng.random() < 0.5:
                    await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as writers:
            for k in range(3):
                writers.start_soon(writer, k)
        await c.append([enc(-1)])  # c learns of the others' last rows through its own commit
        total = sum(not live for plan in plans for batch in plan for live in batch) + 1
        for recorder in recorders:
            await recorder.wait_for(total)
        tg.cancel_scope.cancel()
    for k, recorder in enumerate(recorders):
        assert recorder.ids == list(range(1, total + 1))
        expected_live = [1000 * k + n for n, batch in enumerate(plans[k]) for live in batch if live]
        assert recorder.live == expected_live  # its own stream-only events, in order


async def test_an_idle_tail_wakes_on_a_write_to_the_wal_not_on_a_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from sse_batcher.journals.sqlite import _tail

    if not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux only; elsewhere the idle tail polls every 10 ms")
    # Quiet after 50 ms, and a safety check only every minute: a row that arrives
    # within the test's bound was noticed through inotify.
    monkeypatch.setattr(_tail, "IDLE_AFTER", 0.05)
    monkeypatch.setattr(_tail, "IDLE_SAFETY_INTERVAL", 60.0)
    db = tmp_path / "events.db"
    seen = Recorder()
    async with (
        SQLiteJournal(db, tail_poll_interval=0.002) as a,
        SQLiteJournal(db) as b,
        anyio.create_task_group() as tg,
    ):
        await tg.start(a.run_tail, seen)
        assert a.stats()["tail_wal_watch"] == 1
        for n in range(3):
            await anyio.sleep(0.3)  # let a's tail go idle (time passing, not a sync point)
            await b.append([enc(n)])
            await seen.wait_for(n + 1)  # fails after 10 s; the timer would take 60
        tg.cancel_scope.cancel()
    assert seen.ids == [1, 2, 3]
