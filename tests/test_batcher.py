"""SSEEventBatcher against real SQLite files: triggers, producers, backpressure,
retries, dead letters, drain."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import pytest

from sse_batcher import (
    AggregationRule,
    BatcherClosed,
    ConfigError,
    Event,
    InvalidEvent,
    QueueFull,
    SQLiteJournal,
    SSEEventBatcher,
    StoredEvent,
)

pytestmark = pytest.mark.anyio


class Tail:
    """Everything the journal publishes, with a way to await a condition on it."""

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []
        self.times: list[float] = []
        self._changed = anyio.Event()

    def __call__(self, batch: Sequence[StoredEvent]) -> None:
        self.events.extend(batch)
        self.times.extend(time.monotonic() for _ in batch)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, count: int, within: float = 10.0) -> list[StoredEvent]:
        with anyio.fail_after(within):
            while len(self.events) < count:
                await self._changed.wait()
        return self.events

    def members(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for stored in self.events:
            data = orjson.loads(stored.data_json)
            out.extend([i["data"] for i in data["items"]] if "batch_count" in data else [data])
        return out


@asynccontextmanager
async def running(
    db: Path, **options: Any
) -> AsyncIterator[tuple[SQLiteJournal, SSEEventBatcher, Tail]]:
    tail = Tail()
    async with SQLiteJournal(db, busy_timeout=0.2) as journal, anyio.create_task_group() as tg:
        await tg.start(journal.run_tail, tail)
        async with SSEEventBatcher(journal, **options) as batcher:
            yield journal, batcher, tail
        tg.cancel_scope.cancel()


async def test_three_starts_become_one_batch(tmp_path: Path) -> None:
    async with running(tmp_path / "j.db", window=0.2) as (journal, batcher, tail):
        for job in (123, 124, 125):
            batcher.emit("JOB_STARTED", {"job_id": job}, source="thumbnailer")
        [stored] = await tail.wait_for(1)
        assert stored.event.type == "JOBS_BATCH_STARTED"
        assert stored.event.data["job_ids"] == [123, 124, 125]
        assert [e.id for e in await journal.read_after(None, 10)] == [stored.id]
        stats = batcher.stats()
        assert (stats.events_in, stats.members_out, stats.messages_out) == (3, 3, 1)
        assert stats.messages_saved == 2 and stats.batches_created == 1
        assert stats.flushes["time"] == 1


async def test_window_bounds_latency(tmp_path: Path) -> None:
    async with running(tmp_path / "j.db", window=0.3) as (_, batcher, tail):
        started = time.monotonic()
        batcher.emit("PING", {}, source="a")
        await tail.wait_for(1)
        elapsed = time.monotonic() - started
        assert 0.25 <= elapsed < 5.0  # generous upper bound: shared, noisy machines


async def test_size_and_immediate_do_not_wait_for_the_window(tmp_path: Path) -> None:
    async with running(tmp_path / "j.db", window=30, max_batch=3) as (_, batcher, tail):
        for job in range(3):
            batcher.emit("JOB_STARTED", {"job_id": job}, source="a")
        [batch] = await tail.wait_for(1, within=10)  # a 30 s window would time out
        assert batch.event.data["batch_count"] == 3
        batcher.emit("LOG_ERROR", {"level": "error", "message": "disk full"}, source="a")
        events = await tail.wait_for(2, within=10)
        assert events[1].event.type == "LOG_ERROR"
        flushes = batcher.stats().flushes
        assert flushes["size"] == 1 and flushes["immediate"] == 1


async def test_threads_and_tasks_emit_concurrently_nothing_lost(tmp_path: Path) -> None:
    per_producer = 2000
    async with running(tmp_path / "j.db", window=0.05, max_batch=50) as (_, batcher, tail):

        def thread_worker(name: str) -> None:
            for n in range(per_producer):
                batcher.emit("JOB_STARTED", {"job_id": f"{name}-{n}", "n": n}, source=name)

        async def task_worker(name: str) -> None:
            for n in range(per_producer):
                await batcher.aemit("JOB_STARTED", {"job_id": f"{name}-{n}", "n": n}, source=name)
                if n % 100 == 0:
                    await anyio.lowlevel.checkpoint()

        threads = [threading.Thread(target=thread_worker, args=(f"t{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        async with anyio.create_task_group() as tg:
            for i in range(2):
                tg.start_soon(task_worker, f"a{i}")
        await anyio.to_thread.run_sync(lambda: [t.join() for t in threads])
        await batcher.flush()
        members = tail.members()
        assert len(members) == 6 * per_producer
        for source in ("t0", "t1", "t2", "t3", "a0", "a1"):
            ns = [m["n"] for m in members if m["job_id"].startswith(f"{source}-")]
            assert ns == list(range(per_producer)), f"{source} out of order or incomplete"
        stats = batcher.stats()
        assert stats.events_in == stats.members_out == 6 * per_producer
        assert stats.queue_depth == 0 and stats.queue_bytes == 0
        assert stats.messages_out < stats.members_out  # batching happened
        assert {w.name: w.events_in for w in batcher.workers()}["t2"] == per_producer


async def test_reject_policy_raises_queue_full_and_counts(tmp_path: Path) -> None:
    async with running(tmp_path / "j.db", window=30, max_pending_events=5, overflow="reject") as (
        _,
        batcher,
        _tail,
    ):
        for n in range(5):
            batcher.emit("A", {"n": n}, source="s")
        with pytest.raises(QueueFull, match="bounds 5"):
            batcher.emit("A", {"n": 5}, source="s")
        with pytest.raises(QueueFull):
            batcher.offer([Event.create("A", {}, source="s")])
        assert batcher.stats().dropped["queue_full"] == 2


async def test_drop_oldest_makes_room_and_counts(tmp_path: Path) -> None:
    async with running(
        tmp_path / "j.db", window=30, max_pending_events=3, overflow="drop_oldest"
    ) as (_, batcher, tail):
        # Offered one by one on the loop with no await in between: the assembler
        # cannot run, so the oldest are still in the inbox when the newest arrive.
        for n in range(6):
            batcher.offer([Event.create("A", {"n": n}, source="s")])
        await batcher.flush()
        assert [m["n"] for m in tail.members()] == [3, 4, 5]
        stats = batcher.stats()
        assert stats.dropped["drop_oldest"] == 3
        assert stats.events_in == stats.members_out + stats.dropped_total


async def test_block_policy_aemit_waits_for_room(tmp_path: Path) -> None:
    async with running(
        tmp_path / "j.db", window=0.05, max_pending_events=2, overflow="block", block_timeout=10
    ) as (_, batcher, tail):
        for n in range(20):
            await batcher.aemit("A", {"n": n}, source="s")  # waits instead of failing
        await batcher.flush()
        assert [m["n"] for m in tail.members()] == list(range(20))
        assert batcher.stats().dropped_total == 0


async def test_unbatched_source_goes_one_by_one(tmp_path: Path) -> None:
    async with running(tmp_path / "j.db", window=0.1) as (_, batcher, tail):
        batcher.set_batching("solo", False)
        for job in range(3):
            batcher.emit("JOB_STARTED", {"job_id": job}, source="solo")
            batcher.emit("JOB_STARTED", {"job_id": 100 + job}, source="group")
        await batcher.flush()
        solo = [e for e in tail.events if e.event.source == "solo"]
        group = [e for e in tail.events if e.event.source == "group"]
        assert [e.event.type for e in solo] == ["JOB_STARTED"] * 3
        assert [e.event.type for e in group] == ["JOBS_BATCH_STARTED"]
        assert not batcher.batching_enabled("solo")
        batcher.set_batching("solo", True)
        assert [w.batching for w in batcher.workers() if w.name == "solo"] == [True]


async def test_latest_rule_coalesces_progress(tmp_path: Path) -> None:
    rule = AggregationRule(types="JOB_PROGRESS", mode="latest", entity_fields=("job_id",))
    async with running(tmp_path / "j.db", window=0.1, rules=[rule]) as (_, batcher, tail):
        for pct in range(0, 101, 10):
            batcher.emit("JOB_PROGRESS", {"job_id": 1, "pct": pct}, source="s")
        await batcher.flush()
        assert tail.members() == [{"job_id": 1, "pct": 100}]
        stats = batcher.stats()
        assert stats.coalesced == 10 and stats.events_in == stats.members_out + stats.coalesced


async def test_stream_only_events_are_published_not_stored(tmp_path: Path) -> None:
    rule = AggregationRule(types="LOG_DEBUG", persist=False)
    async with running(tmp_path / "j.db", window=0.05, rules=[rule]) as (journal, batcher, tail):
        batcher.emit("LOG_DEBUG", {"message": "x"}, source="s")
        batcher.emit("JOB_STARTED", {"job_id": 1}, source="s")
        await batcher.flush()
        assert {e.event.type: e.id for e in tail.events}["LOG_DEBUG"] is None
        assert [e.event.type for e in await journal.read_after(None, 10)] == ["JOB_STARTED"]


async def test_invalid_data_is_dropped_with_a_reason(tmp_path: Path) -> None:
    async with running(tmp_path / "j.db", window=0.05) as (_, batcher, tail):
        batcher.emit("A", {"when": object()}, source="s")
        batcher.emit("A", {"blob": "x" * 70_000}, source="s")
        batcher.emit("A", {"ok": True}, source="s")
        await batcher.flush()
        assert tail.members() == [{"ok": True}]
        assert batcher.stats().dropped["invalid"] == 2
        with pytest.raises(InvalidEvent, match="CR, LF"):
            batcher.emit("BAD\nTYPE", {}, source="s")
        with pytest.raises(InvalidEvent, match="empty"):
            batcher.emit("A", {}, source="")
        with pytest.raises(InvalidEvent, match="JSON object"):
            batcher.emit("A", [1, 2], source="s")  # type: ignore[arg-type]


async def test_journal_failure_retries_then_dead_letters_then_recovers(tmp_path: Path) -> None:
    db, dead = tmp_path / "j.db", tmp_path / "dead.jsonl"
    options: dict[str, Any] = {
        "window": 0.05,
        "max_retries": 1,
        "retry_delay": 0.01,
        "dead_letter_path": dead,
    }
    async with running(db, **options) as (journal, batcher, _tail):
        batcher.emit("A", {"n": 0}, source="s")
        await batcher.flush()
        blocker = sqlite3.connect(db, timeout=0.1)
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        try:
            for n in range(1, 4):
                batcher.emit("A", {"n": n}, source="s")
            await batcher.flush()  # returns once the batch is dead-lettered
            stats = batcher.stats()
            assert stats.retries == 1 and stats.failed_writes == 2
            assert stats.dead_lettered == 3 and stats.dead_letter_pending == 3
            assert dead.exists() and len(dead.read_bytes().splitlines()) == 1
        finally:
            blocker.rollback()
            blocker.close()
        batcher.emit("A", {"n": 4}, source="s")
        await batcher.flush()  # a successful write re-appends the dead letters
        stored = [orjson.loads(e.data_json) for e in await journal.read_after(None, 100)]
        members = [
            m["n"]
            for d in stored
            for m in ([i["data"] for i in d["items"]] if "items" in d else [d])
        ]
        assert sorted(members) == [0, 1, 2, 3, 4] and len(members) == 5
        stats = batcher.stats()
        assert stats.dead_letter_pending == 0 and stats.dead_letter_replayed == 3
        assert not dead.exists()
        assert stats.events_in == stats.members_out


async def test_dead_letters_are_reappended_at_next_start(tmp_path: Path) -> None:
    db, dead = tmp_path / "j.db", tmp_path / "dead.jsonl"
    blocker = sqlite3.connect(db, timeout=0.1)
    try:
        async with running(db, max_retries=0, dead_letter_path=dead, window=0.05) as (_, b, _t):
            blocker.execute("BEGIN EXCLUSIVE")  # held until this batcher has closed
            b.emit("JOB_STARTED", {"job_id": 1}, source="s")
            b.emit("JOB_STARTED", {"job_id": 2}, source="s")
            await b.flush()
            assert b.stats().dead_letter_pending == 2
    finally:
        blocker.rollback()
        blocker.close()
    async with running(db, dead_letter_path=dead) as (journal, b, tail):
        await tail.wait_for(1)
        [stored] = await journal.read_after(None, 10)
        assert stored.event.data["job_ids"] == [1, 2]
        # The file is rewritten in a worker thread just after the append returns and
        # the batcher exposes no event for it: poll the condition with a deadline.
        with anyio.fail_after(5):
            while dead.exists():  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert b.stats().dead_letter_replayed == 2


async def test_close_drains_pending_and_refuses_new_events(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    async with SQLiteJournal(db) as journal:
        batcher = SSEEventBatcher(journal, window=60)
        with pytest.raises(BatcherClosed, match="async with"):
            batcher.emit("A", {}, source="s")
        async with batcher:
            for n in range(25):
                batcher.emit("A", {"n": n}, source="s")
        with pytest.raises(BatcherClosed, match="closed"):
            batcher.emit("A", {}, source="s")
        with pytest.raises(BatcherClosed):
            async with batcher:
                pass
        stored = await journal.read_after(None, 100)
        assert sum(orjson.loads(e.data_json).get("batch_count", 1) for e in stored) == 25
        assert batcher.stats().flushes["close"] >= 1


async def test_offer_is_all_or_nothing_and_durable_offer_waits_for_commit(tmp_path: Path) -> None:
    async with running(tmp_path / "j.db", window=0.2, max_pending_events=10) as (j, b, _):
        events = [Event.create("A", {"n": n}, source="s", uid=f"u{n}") for n in range(3)]
        await b.offer_durably(events)
        [stored] = await j.read_after(None, 10)  # committed before offer_durably returned
        assert stored.event.data["batch_count"] == 3
        assert await j.recent_uids(60) == {"u0", "u1", "u2"}
        with pytest.raises(QueueFull):
            b.offer([Event.create("A", {}, source="s") for _ in range(11)])
        assert b.stats().queue_depth == 0


async def test_configuration_ranges(tmp_path: Path) -> None:
    async with SQLiteJournal(tmp_path / "j.db") as journal:
        for bad in ({"window": 0.001}, {"window": 61}, {"max_batch": 0}, {"max_batch": 10_001}):
            with pytest.raises(ConfigError, match="between"):
                SSEEventBatcher(journal, **bad)
        with pytest.raises(ConfigError, match="overflow"):
            SSEEventBatcher(journal, overflow="wait")  # type: ignore[arg-type]


async def test_drain_deadline_dead_letters_what_it_cannot_write(tmp_path: Path) -> None:
    db, dead = tmp_path / "j.db", tmp_path / "dead.jsonl"
    async with SQLiteJournal(db, busy_timeout=0.1) as journal:
        batcher = SSEEventBatcher(
            journal,
            window=60,
            max_retries=50,
            retry_delay=0.2,
            drain_timeout=0.5,
            dead_letter_path=dead,
        )
        blocker = sqlite3.connect(db, timeout=0.1)
        try:
            async with batcher:
                for n in range(7):
                    batcher.emit("A", {"n": n}, source="s")
                blocker.execute("BEGIN EXCLUSIVE")
                started = time.monotonic()
            assert time.monotonic() - started < 10  # bounded by drain_timeout, not retries
        finally:
            blocker.rollback()
            blocker.close()
        lines = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
        assert sum(line["members"] for line in lines) == 7
        stats = batcher.stats()
        assert stats.dead_letter_pending == 7
        assert stats.events_in == stats.members_out + stats.dead_letter_pending


async def test_drop_oldest_reaches_events_already_grouped(tmp_path: Path) -> None:
    async with running(
        tmp_path / "j.db", window=30, max_pending_events=3, overflow="drop_oldest"
    ) as (_, batcher, tail):
        batcher.offer([Event.create("A", {"n": n}, source="s") for n in range(3)])
        with anyio.fail_after(5):  # the assembler takes them into a group
            while batcher.stats().queue_bytes == 0:
                await anyio.lowlevel.checkpoint()
        batcher.offer([Event.create("B", {"n": n}, source="s") for n in (3, 4)])
        assert batcher.stats().queue_depth <= 3  # paid at once, not at the next cycle
        await batcher.flush()
        assert sorted(m["n"] for m in tail.members()) == [3, 4]
        stats = batcher.stats()
        assert stats.dropped["drop_oldest"] == 3  # the whole oldest group went
        assert stats.events_in == stats.members_out + stats.dropped_total
