"""BatchLogHandler against a real batcher on a real SQLite journal."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from sse_batcher import (
    BatchLogHandler,
    InvalidEvent,
    QueueFull,
    SQLiteJournal,
    SSEEventBatcher,
    StoredEvent,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def log(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    """A private DEBUG logger, not propagating to root (whose handlers would see every record)."""
    logger = logging.getLogger(f"tests.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


@pytest.fixture
async def batcher(tmp_path: Path) -> AsyncIterator[SSEEventBatcher]:
    async with (
        SQLiteJournal(tmp_path / "events.db") as journal,
        SSEEventBatcher(journal, window=30) as batcher,
    ):
        yield batcher


async def stored(batcher: SSEEventBatcher) -> list[StoredEvent]:
    await batcher.flush()
    return await batcher.journal.read_after(None, 10_000)


async def wait_for_rows(batcher: SSEEventBatcher, n: int) -> list[StoredEvent]:
    """Poll the journal (no flush) until it holds ``n`` events; 5 s at most."""
    with anyio.fail_after(5):
        while True:
            rows = await batcher.journal.read_after(None, 10_000)
            if len(rows) >= n:
                return rows
            await anyio.sleep(0.01)


async def test_record_becomes_event_with_data_and_extra(
    batcher: SSEEventBatcher, log: logging.Logger
) -> None:
    handler = BatchLogHandler(batcher)
    log.addHandler(handler)
    unserialisable = object()
    log.info(
        "Rendering overlay for camera %d",
        7,
        extra={"job_id": 42, "tags": ["a", "b"], "obj": unserialisable, "level": "spoof"},
    )
    log.debug("below the handler's INFO threshold")

    (event,) = await stored(batcher)
    assert event.event.type == "LOG_INFO"
    assert event.event.source == log.name
    assert dict(event.event.data) == {
        "message": "Rendering overlay for camera 7",
        "logger": log.name,
        "level": "info",
        "job_id": 42,
        "tags": ["a", "b"],
    }
    assert handler.stats()["records_sent"] == 1


async def test_source_override_level_names_and_record_time(
    batcher: SSEEventBatcher, log: logging.Logger
) -> None:
    log.addHandler(BatchLogHandler(batcher, source="overlay_worker", level=logging.DEBUG))
    logging.addLevelName(25, "NOTICE ME")
    try:
        log.debug("d")
        log.warning("w")
        log.log(25, "custom")
    finally:
        logging.addLevelName(25, "Level 25")
    events = await stored(batcher)
    assert {(e.event.type, e.event.source) for e in events} == {
        ("LOG_DEBUG", "overlay_worker"),
        ("LOG_WARNING", "overlay_worker"),
        ("LOG_NOTICE_ME", "overlay_worker"),
    }
    assert {e.event.data["level"] for e in events} == {"debug", "warning", "notice me"}


async def test_exception_is_formatted(batcher: SSEEventBatcher, log: logging.Logger) -> None:
    log.addHandler(BatchLogHandler(batcher))
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("render failed", extra={"camera_id": 3})
    log.info("with stack", stack_info=True)
    events = await stored(batcher)
    by_message = {e.event.data["message"]: e.event.data for e in events}
    failed = by_message["render failed"]
    assert failed["level"] == "error" and failed["camera_id"] == 3
    assert "ZeroDivisionError: division by zero" in failed["exception"]
    assert "Traceback" in failed["exception"]
    assert "test_exception_is_formatted" in by_message["with stack"]["stack"]


async def test_huge_message_is_truncated_not_lost(
    batcher: SSEEventBatcher, log: logging.Logger
) -> None:
    log.addHandler(BatchLogHandler(batcher))
    log.info("x" * 200_000)
    (event,) = await stored(batcher)
    message = event.event.data["message"]
    assert message.startswith("x" * 1000) and message.endswith("characters cut]")
    assert len(event.data_json) < 64 * 1024
    assert batcher.stats().dropped["invalid"] == 0


async def test_error_records_are_immediate(batcher: SSEEventBatcher, log: logging.Logger) -> None:
    # The window is 30 s: only the priority path can deliver within the deadline,
    # and it takes the info record queued before it along.
    log.addHandler(BatchLogHandler(batcher, source="worker"))
    log.info("Creating worktree")
    log.error("Overlay failed for camera 3")
    rows = await wait_for_rows(batcher, 2)
    assert [(r.event.type, r.event.data["message"]) for r in rows] == [
        ("LOG_INFO", "Creating worktree"),
        ("LOG_ERROR", "Overlay failed for camera 3"),
    ]


async def test_info_records_wait_for_the_window(
    batcher: SSEEventBatcher, log: logging.Logger
) -> None:
    log.addHandler(BatchLogHandler(batcher, source="worker"))
    for step in range(3):
        log.info("step %d", step)
    await anyio.wait_all_tasks_blocked()
    assert await batcher.journal.read_after(None, 100) == []
    (event,) = await stored(batcher)
    assert event.event.type == "LOGS_BATCH_INFO"
    assert [item["data"]["message"] for item in event.event.data["items"]] == [
        "step 0",
        "step 1",
        "step 2",
    ]


async def test_never_raises_when_the_batcher_is_closed(
    tmp_path: Path, log: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        SQLiteJournal(tmp_path / "events.db") as journal,
        SSEEventBatcher(journal, window=0.05) as batcher,
    ):
        handler = BatchLogHandler(batcher)
        log.addHandler(handler)
    log.info("after close")
    log.error("after close, error")
    assert handler.stats()["dropped_closed"] == 2
    assert capsys.readouterr().err == ""


async def test_never_raises_or_prints_when_the_queue_is_full(
    tmp_path: Path, log: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        SQLiteJournal(tmp_path / "events.db") as journal,
        SSEEventBatcher(journal, window=5, max_pending_events=3, overflow="reject") as batcher,
    ):
        handler = BatchLogHandler(batcher)
        log.addHandler(handler)
        for n in range(10):
            log.info("line %d", n)
        stats = handler.stats()
        assert stats["records_sent"] == 3
        assert stats["dropped_full"] == 7
    assert capsys.readouterr().err == ""


async def test_bad_format_uses_handle_error_and_never_raises(
    batcher: SSEEventBatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = BatchLogHandler(batcher)
    # Straight to the handler: pytest's own capture handlers fail a test on a bad record.
    record = logging.makeLogRecord(
        {"name": "w", "msg": "%d jobs", "args": ("x",), "levelno": 20, "levelname": "INFO"}
    )
    handler.handle(record)
    assert handler.stats()["errors"] == 1
    assert "--- Logging error ---" in capsys.readouterr().err
    assert await stored(batcher) == []


class RecordingPublisher:
    """A stand-in for a remote publisher: records what it is given, logs as it goes."""

    def __init__(self, logger: logging.Logger, *, full_after: int | None = None) -> None:
        self.published: list[tuple[str, Mapping[str, Any] | None, str | None, float | None]] = []
        self.logger = logger
        self.full_after = full_after

    def publish(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
        ts: float | None = None,
    ) -> None:
        # A publisher that logs about its own work (a retry, a spool) on a logger the
        # handler listens to must not recurse.
        self.logger.warning("publishing %s", type)
        if self.full_after is not None and len(self.published) >= self.full_after:
            raise QueueFull("spool full")
        self.published.append((type, data, source, ts))


def test_publisher_target_without_a_loop(log: logging.Logger) -> None:
    publisher = RecordingPublisher(log, full_after=2)
    handler = BatchLogHandler(publisher, source="remote-worker")
    log.addHandler(handler)
    before = time.time()
    for n in range(3):
        log.info("line %d", n, extra={"n": n})
    assert [(t, d and d["message"], s) for t, d, s, _ in publisher.published] == [
        ("LOG_INFO", "line 0", "remote-worker"),
        ("LOG_INFO", "line 1", "remote-worker"),
    ]
    # The event time is the record's creation time, not the time it was shipped.
    assert all(ts is not None and before <= ts <= time.time() for *_, ts in publisher.published)
    assert handler.stats() == {
        "records_sent": 2,
        "dropped_full": 1,
        "dropped_closed": 0,
        "dropped_recursive": 3,
        "dropped_error": 0,
        "errors": 0,
    }


def test_own_loggers_are_ignored() -> None:
    publisher = RecordingPublisher(logging.getLogger("unused"))
    handler = BatchLogHandler(publisher)
    internal = logging.getLogger("sse_batcher.batcher")
    internal.addHandler(handler)
    try:
        internal.warning("journal append failed; retrying")
    finally:
        internal.removeHandler(handler)
    assert publisher.published == []


def test_target_must_emit_or_publish() -> None:
    class CoroutinePublisher:
        async def publish(self, type: str, data: Any = None, **kwargs: Any) -> None: ...

    for target in (object(), CoroutinePublisher()):
        with pytest.raises(TypeError, match="a synchronous publish"):
            BatchLogHandler(target)  # type: ignore[arg-type]


async def test_logging_from_threads(batcher: SSEEventBatcher, log: logging.Logger) -> None:
    handler = BatchLogHandler(batcher, source="threads")
    log.addHandler(handler)

    def run(n: int) -> None:
        for i in range(50):
            log.info("thread %d line %d", n, i)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        await anyio.to_thread.run_sync(thread.join)
    events = await stored(batcher)
    assert sum(int(e.event.data.get("batch_count", 1)) for e in events) == 200
    assert handler.stats()["records_sent"] == 200


async def test_ships_through_a_remote_publisher(tmp_path: Path, log: logging.Logger) -> None:
    from sse_batcher import RemotePublisher, create_app

    from .servers import serve_app

    batcher = SSEEventBatcher(SQLiteJournal(tmp_path / "server.db"), window=0.05)
    async with serve_app(create_app(batcher)) as url:
        publisher = RemotePublisher(url, source="remote-host", flush_interval=0.05)
        handler = BatchLogHandler(publisher)
        log.addHandler(handler)
        log.info("Creating worktree", extra={"job_id": 9})
        log.error("Overlay failed for camera %d", 3)
        assert await anyio.to_thread.run_sync(publisher.flush, 10.0)
        await anyio.to_thread.run_sync(publisher.close)
        events = await stored(batcher)
    assert handler.stats()["records_sent"] == 2
    # The server may batch the two records or not: compare members either way.
    flat = [
        (e.event.source, item)
        for e in events
        for item in (
            [i["data"] for i in e.event.data["items"]]
            if "items" in e.event.data
            else [e.event.data]
        )
    ]
    assert [(s, i["message"], i["level"]) for s, i in flat] == [
        (log.name, "Creating worktree", "info"),
        (log.name, "Overlay failed for camera 3", "error"),
    ]
    assert flat[0][1]["job_id"] == 9


async def test_ships_through_an_async_publisher(tmp_path: Path, log: logging.Logger) -> None:
    from sse_batcher import AsyncRemotePublisher, create_app

    from .servers import serve_app

    batcher = SSEEventBatcher(SQLiteJournal(tmp_path / "server.db"), window=0.05)
    async with serve_app(create_app(batcher)) as url:
        async with AsyncRemotePublisher(url, flush_interval=0.05) as publisher:
            handler = BatchLogHandler(publisher, source="async-host")
            log.addHandler(handler)
            log.warning("disk at %d%%", 91, extra={"disk": "/data"})
            await publisher.flush()
        events = await stored(batcher)
    assert [(e.event.type, e.event.source, e.event.data["message"]) for e in events] == [
        ("LOG_WARNING", "async-host", "disk at 91%")
    ]
    assert events[0].event.data["disk"] == "/data"


async def test_channel_goes_with_every_record(
    batcher: SSEEventBatcher, log: logging.Logger
) -> None:
    log.addHandler(BatchLogHandler(batcher, source="w", channel="ops.logs"))
    log.info("one")
    log.warning("two")
    assert {e.event.channel for e in await stored(batcher)} == {"ops.logs"}
    with pytest.raises(InvalidEvent):
        BatchLogHandler(batcher, channel="ops..logs")
