"""SSEBroadcasterMixin against a real batcher on a real SQLite journal."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from sse_batcher import (
    BatcherClosed,
    EmitStats,
    InvalidEvent,
    QueueFull,
    SQLiteJournal,
    SSEBroadcasterMixin,
    SSEEventBatcher,
    StoredEvent,
)

pytestmark = pytest.mark.anyio


class ThumbnailWorker(SSEBroadcasterMixin):
    pass


class HTTPPollerWorker(SSEBroadcasterMixin):
    worker_name = "poller"


class BaseWorker:
    """An existing worker base class with its own constructor arguments."""

    def __init__(self, *, poll_interval: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.poll_interval = poll_interval


class OverlayWorker(SSEBroadcasterMixin, BaseWorker):
    pass


@pytest.fixture
async def batcher(tmp_path: Path) -> AsyncIterator[SSEEventBatcher]:
    async with (
        SQLiteJournal(tmp_path / "events.db") as journal,
        SSEEventBatcher(journal, window=1.0) as batcher,
    ):
        yield batcher


async def stored(batcher: SSEEventBatcher) -> list[StoredEvent]:
    await batcher.flush()
    return await batcher.journal.read_after(None, 10_000)


def started(job_ids: range) -> list[dict[str, int]]:
    return [{"job_id": i} for i in job_ids]


async def test_worker_name_default_class_attribute_and_argument(batcher: SSEEventBatcher) -> None:
    assert ThumbnailWorker(batcher=batcher).worker_name == "thumbnail_worker"
    assert HTTPPollerWorker(batcher=batcher).worker_name == "poller"
    assert HTTPPollerWorker(batcher=batcher, worker_name="poller-2").worker_name == "poller-2"
    with pytest.raises(InvalidEvent):
        ThumbnailWorker(batcher=batcher, worker_name="bad:name")


async def test_cooperative_init_mixes_into_an_existing_class(batcher: SSEEventBatcher) -> None:
    worker = OverlayWorker(batcher=batcher, poll_interval=2.5)
    assert worker.poll_interval == 2.5
    assert worker.worker_name == "overlay_worker"
    assert worker.batcher is batcher


async def test_emit_from_a_plain_thread_is_batched(batcher: SSEEventBatcher) -> None:
    worker = ThumbnailWorker(batcher=batcher)
    thread = threading.Thread(
        target=lambda: [worker.emit("JOB_STARTED", d) for d in started(range(1, 4))]
    )
    thread.start()
    thread.join()

    events = await stored(batcher)
    assert [(e.event.type, e.event.source) for e in events] == [
        ("JOBS_BATCH_STARTED", "thumbnail_worker")
    ]
    assert events[0].event.data["job_ids"] == [1, 2, 3]
    assert worker.emit_stats() == EmitStats(emitted=3, dropped_full=0, dropped_closed=0)


async def test_emit_and_aemit_from_anyio_tasks_on_the_batcher_loop(
    batcher: SSEEventBatcher,
) -> None:
    worker = ThumbnailWorker(batcher=batcher)

    async def job(job_id: int) -> None:
        await worker.aemit("JOB_STARTED", {"job_id": job_id})
        await anyio.lowlevel.checkpoint()
        worker.emit("JOB_COMPLETED", {"job_id": job_id})

    async with anyio.create_task_group() as tg:
        for job_id in range(4):
            tg.start_soon(job, job_id)

    events = await stored(batcher)
    by_type = {e.event.type: e.event.data for e in events}
    assert sorted(by_type) == ["JOBS_BATCH_COMPLETED", "JOBS_BATCH_STARTED"]
    assert sorted(by_type["JOBS_BATCH_STARTED"]["job_ids"]) == [0, 1, 2, 3]
    assert sorted(by_type["JOBS_BATCH_COMPLETED"]["job_ids"]) == [0, 1, 2, 3]
    assert worker.emit_stats().emitted == 8


async def test_emit_and_aemit_from_a_thread_running_its_own_loop(
    batcher: SSEEventBatcher,
) -> None:
    worker = ThumbnailWorker(batcher=batcher)
    errors: list[BaseException] = []

    async def foreign_worker() -> None:
        # A different event loop in a different thread: aemit must not touch the
        # batcher's loop primitives; it behaves as the thread-safe emit.
        for job_id in range(3):
            await worker.aemit("JOB_STARTED", {"job_id": job_id})
            worker.emit("JOB_PROGRESS", {"job_id": job_id, "percent": 50})
            await asyncio.sleep(0)

    def thread_main() -> None:
        try:
            asyncio.run(foreign_worker())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=thread_main)
    thread.start()
    await anyio.to_thread.run_sync(thread.join)
    assert errors == []

    events = await stored(batcher)
    types = sorted(e.event.type for e in events)
    assert types == ["JOBS_BATCH_PROGRESS", "JOBS_BATCH_STARTED"]
    assert sum(int(e.event.data["batch_count"]) for e in events) == 6
    assert worker.emit_stats().emitted == 6


async def test_use_batching_false_delivers_one_by_one(batcher: SSEEventBatcher) -> None:
    unbatched = ThumbnailWorker(batcher=batcher, worker_name="solo", use_batching=False)
    batched = ThumbnailWorker(batcher=batcher, worker_name="grouped")
    assert unbatched.use_batching is False
    assert batcher.batching_enabled("solo") is False
    # Different job ids: per-entity order would otherwise (rightly) split the groups.
    for solo_data, grouped_data in zip(started(range(3)), started(range(10, 13)), strict=True):
        unbatched.emit("JOB_STARTED", solo_data)
        batched.emit("JOB_STARTED", grouped_data)

    events = await stored(batcher)
    solo = [(e.event.type, e.event.data) for e in events if e.event.source == "solo"]
    grouped = [e.event.type for e in events if e.event.source == "grouped"]
    assert solo == [("JOB_STARTED", d) for d in started(range(3))]
    assert grouped == ["JOBS_BATCH_STARTED"]


async def test_runtime_toggle_goes_through_the_batcher(batcher: SSEEventBatcher) -> None:
    worker = ThumbnailWorker(batcher=batcher)
    assert worker.use_batching is True

    # As PATCH /workers/{name} does: the batcher flips it, the worker sees it at once.
    batcher.set_batching("thumbnail_worker", False)
    assert worker.use_batching is False
    for data in started(range(2)):
        worker.emit("JOB_STARTED", data)
    first = await stored(batcher)
    assert [e.event.type for e in first] == ["JOB_STARTED", "JOB_STARTED"]

    worker.use_batching = True
    assert batcher.batching_enabled("thumbnail_worker") is True
    for data in started(range(2, 4)):
        worker.emit("JOB_STARTED", data)
    second = (await stored(batcher))[len(first) :]
    assert [(e.event.type, e.event.data["job_ids"]) for e in second] == [
        ("JOBS_BATCH_STARTED", [2, 3])
    ]


async def test_constructor_use_batching_true_re_enables(batcher: SSEEventBatcher) -> None:
    batcher.set_batching("thumbnail_worker", False)
    ThumbnailWorker(batcher=batcher)  # None: leaves the batcher's setting alone
    assert batcher.batching_enabled("thumbnail_worker") is False
    ThumbnailWorker(batcher=batcher, use_batching=True)
    assert batcher.batching_enabled("thumbnail_worker") is True


async def test_queue_full_is_counted_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        SQLiteJournal(tmp_path / "events.db") as journal,
        SSEEventBatcher(journal, window=5, max_pending_events=5, overflow="reject") as batcher,
    ):
        worker = ThumbnailWorker(batcher=batcher)
        strict = ThumbnailWorker(batcher=batcher, worker_name="strict", strict_emit=True)
        # No checkpoint between emits: the batcher cannot drain, so the bound is hit.
        for job_id in range(8):
            worker.emit("JOB_STARTED", {"job_id": job_id})
        with pytest.raises(QueueFull):
            strict.emit("JOB_STARTED", {"job_id": 99})
        with pytest.raises(QueueFull):
            await strict.aemit("JOB_STARTED", {"job_id": 99})

        assert worker.emit_stats() == EmitStats(emitted=5, dropped_full=3, dropped_closed=0)
        assert worker.emit_stats().dropped == 3
        assert strict.emit_stats().dropped_full == 2
        assert batcher.stats().dropped["queue_full"] == 5
        # One warning per interval, not one per dropped event.
        warnings = [r for r in caplog.records if r.name == "sse_batcher.mixin"]
        assert len(warnings) == 1
        assert "thumbnail_worker" in warnings[0].getMessage()


async def test_emit_after_close_is_counted_not_raised(tmp_path: Path) -> None:
    async with (
        SQLiteJournal(tmp_path / "events.db") as journal,
        SSEEventBatcher(journal, window=0.05) as batcher,
    ):
        worker = ThumbnailWorker(batcher=batcher)
        strict = ThumbnailWorker(batcher=batcher, worker_name="strict", strict_emit=True)
        worker.emit("JOB_STARTED", {"job_id": 1})
    worker.emit("JOB_COMPLETED", {"job_id": 1})
    await worker.aemit("JOB_COMPLETED", {"job_id": 1})
    assert worker.emit_stats() == EmitStats(emitted=1, dropped_full=0, dropped_closed=2)
    with pytest.raises(BatcherClosed):
        strict.emit("JOB_STARTED", {"job_id": 2})


async def test_invalid_type_is_a_caller_bug_and_raises(batcher: SSEEventBatcher) -> None:
    worker = ThumbnailWorker(batcher=batcher)
    with pytest.raises(InvalidEvent):
        worker.emit("JOB\nSTARTED", {"job_id": 1})
    with pytest.raises(InvalidEvent):
        await worker.aemit("", {"job_id": 1})
    assert worker.emit_stats().emitted == 0


async def test_many_threads_emit_concurrently(batcher: SSEEventBatcher) -> None:
    workers = [ThumbnailWorker(batcher=batcher, worker_name=f"w{i}") for i in range(4)]

    def run(worker: ThumbnailWorker) -> None:
        for job_id in range(250):
            worker.emit("JOB_PROGRESS", {"job_id": job_id, "percent": 10})

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        await anyio.to_thread.run_sync(thread.join)
    events = await stored(batcher)
    assert sum(int(e.event.data.get("batch_count", 1)) for e in events) == 1000
    assert all(w.emit_stats().emitted == 250 for w in workers)
    assert batcher.stats().members_out == 1000


class CameraWorker(SSEBroadcasterMixin):
    pass


async def test_a_worker_has_a_channel_and_an_event_may_choose_another(
    batcher: SSEEventBatcher,
) -> None:
    worker = CameraWorker(batcher=batcher, channel="camera.7")
    worker.emit("FRAME", {"n": 1})
    worker.emit("FRAME", {"n": 2}, channel="camera.7.alerts")
    await worker.aemit("FRAME", {"n": 3})
    CameraWorker(batcher=batcher).emit("FRAME", {"n": 4})
    rows = await stored(batcher)
    channels = sorted((r.event.channel, r.event.data.get("n")) for r in rows)
    # FRAME x2 on camera.7 within the window are batched together, never with the others
    assert [c for c, _ in channels] == ["camera.7", "camera.7.alerts", "default"]
    with pytest.raises(InvalidEvent):
        CameraWorker(batcher=batcher, channel="camera.*")
