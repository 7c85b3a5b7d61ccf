"""ArchiveSink: layout, one write per file, rollover, compression, retention, bounded
descriptors (LRU eviction, EMFILE), rollback of partial batches, path sanitising."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sse_batcher import (
    ArchiveSink,
    BatcherClosed,
    ConfigError,
    Event,
    Position,
    SinkSet,
    StoredEvent,
)
from sse_batcher.sinks._archive import sanitize
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

DAY = 86400
D0 = 20_000 * DAY  # 2024-10-04 00:00:00 UTC
D0_NAME, D1_NAME = "2024-10-04", "2024-10-05"


def stored(
    n: int, *, source: str = "w", type: str = "JOB_DONE", ts: float = D0 + 60, **data: Any
) -> StoredEvent:
    payload = {"n": n, **data}
    return StoredEvent(
        f"e.{n}", Position(n), Event(type, source, payload, ts=ts), orjson.dumps(payload)
    )


def lines(path: Path) -> list[dict[str, Any]]:
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        return [json.loads(line) for line in fh.read().splitlines()]


def total_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.jsonl"))


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# The events' day (D0) is "today" for sinks with this clock: nothing is compressed
# under the test's feet by the maintenance pass that runs at start.
TODAY = Clock(D0 + 100)


async def test_layout_envelopes_and_error_copies(tmp_path: Path) -> None:
    batch = [
        stored(1, source="thumbnail_worker"),
        stored(2, source="mailer", type="MAIL_FAILED"),
        stored(3, source="thumbnail_worker", level="error"),
        stored(4, source="mailer", ts=D0 + DAY + 5),  # the next UTC day
    ]
    # No compression: the first day is already over by this clock.
    archive = ArchiveSink(tmp_path, compress_after_close=False, clock=Clock(D0 + DAY + 10))
    async with archive as sink:
        await sink.write(batch)
        stats = sink.stats()
    assert lines(tmp_path / D0_NAME / "thumbnail_worker.jsonl") == [
        {
            "id": "e.1",
            "type": "JOB_DONE",
            "source": "thumbnail_worker",
            "channel": "default",
            "ts": D0 + 60,
            "data": {"n": 1},
        },
        {
            "id": "e.3",
            "type": "JOB_DONE",
            "source": "thumbnail_worker",
            "channel": "default",
            "ts": D0 + 60,
            "data": {"n": 3, "level": "error"},
        },
    ]
    assert [r["id"] for r in lines(tmp_path / D0_NAME / "mailer.jsonl")] == ["e.2"]
    assert [r["id"] for r in lines(tmp_path / D0_NAME / "error.jsonl")] == ["e.2", "e.3"]
    assert [r["id"] for r in lines(tmp_path / D1_NAME / "mailer.jsonl")] == ["e.4"]
    # Four files, each written once: one open and one write call per target file.
    assert stats["opens"] == 4 and stats["write_calls"] == 1
    assert stats["lines_written"] == 6 and stats["error_lines"] == 2
    assert stats["bytes_written"] == total_size(tmp_path)
    assert stats["files_open"] == 4


async def test_rollover_at_utc_midnight_compresses_the_closed_day(tmp_path: Path) -> None:
    clock = Clock(D0 + 100)
    async with ArchiveSink(tmp_path, clock=clock) as sink:
        await sink.write([stored(n, source=f"s{n % 3}", ts=D0 + 100) for n in range(30)])
        assert sink.stats()["files_open"] == 3 and sink.stats()["compressed"] == 0
        clock.now = D0 + DAY + 1  # midnight passed
        await sink.write([stored(100, source="s0", ts=D0 + DAY + 1)])
        await wait_until(lambda: sink.stats()["compressed"] == 3)
        stats = sink.stats()
        assert stats["rollovers"] == 1
        assert stats["files_open"] == 1  # only today's file stays open
        day0 = sorted(p.name for p in (tmp_path / D0_NAME).iterdir())
        assert day0 == ["s0.jsonl.gz", "s1.jsonl.gz", "s2.jsonl.gz"]
        assert [r["data"]["n"] for r in lines(tmp_path / D0_NAME / "s1.jsonl.gz")] == list(
            range(1, 30, 3)
        )
        assert (tmp_path / D1_NAME / "s0.jsonl").exists()

        # A late event for the closed day: appended, then compressed as a second
        # gzip member on the next pass; readers see both.
        await sink.write([stored(101, source="s1", ts=D0 + DAY - 1)])
        clock.now = D0 + 2 * DAY + 1
        await sink.write([stored(102, source="s0", ts=D0 + 2 * DAY + 1)])
        await wait_until(lambda: sink.stats()["compressed"] == 5)
    assert not (tmp_path / D0_NAME / "s1.jsonl").exists()
    late = lines(tmp_path / D0_NAME / "s1.jsonl.gz")
    assert [r["data"]["n"] for r in late] == [*range(1, 30, 3), 101]
    assert (tmp_path / D1_NAME / "s0.jsonl.gz").exists()


async def test_retention_deletes_old_days_and_compresses_leftovers(tmp_path: Path) -> None:
    def make(relative: str, content: bytes = b'{"id":"x"}\n') -> Path:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if relative.endswith(".gz"):
            with gzip.open(path, "wb") as fh:
                fh.write(content)
        else:
            path.write_bytes(content)
        return path

    old_gz = make("2024-09-20/a.jsonl.gz")  # 14 days before D0
    old_error = make("2024-09-20/error.jsonl")
    recent = make("2024-10-01/a.jsonl")  # 3 days before: kept, compressed
    today = make(f"{D0_NAME}/a.jsonl")  # today: left alone
    foreign = make("2024-09-20-notes.txt")  # not one of ours: never touched
    stale_part = make("2024-10-02/b.jsonl.gz.part")  # an interrupted compression
    async with ArchiveSink(tmp_path, retention_days=7, clock=Clock(D0 + 5)) as sink:
        await wait_until(lambda: sink.stats()["compressed"] == 1)
        stats = sink.stats()
    assert stats["deleted"] == 2
    assert not old_gz.exists() and not old_error.exists()
    assert not old_gz.parent.exists()  # the emptied day directory went too
    assert not recent.exists() and lines(recent.with_suffix(".jsonl.gz")) == [{"id": "x"}]
    assert today.exists() and foreign.exists()
    assert not stale_part.exists() and not stale_part.parent.exists()


async def test_no_compression_without_a_day_change(tmp_path: Path) -> None:
    async with ArchiveSink(tmp_path, compress_after_close=False, clock=Clock(D0 + DAY * 3)) as sink:
        await sink.write([stored(1)])
    assert (tmp_path / D0_NAME / "w.jsonl").exists()
    assert sink.stats()["compressed"] == 0


async def test_forty_categories_through_four_descriptors(tmp_path: Path) -> None:
    baseline = fd_count()
    events = [stored(n, source=f"cat{n % 40:02d}") for n in range(4000)]
    async with SinkSet([ArchiveSink(tmp_path, max_open_files=4, clock=TODAY)]) as sinks:
        # The start-up maintenance pass holds a directory descriptor while it scans.
        await wait_until(lambda: sinks.stats()["archive"]["sink_maintenance_passes"] >= 1)
        for start in range(0, len(events), 100):
            sinks.offer(events[start : start + 100])
            await wait_until(lambda s=start: sinks.stats()["archive"]["written"] >= s + 100)
            assert fd_count() - baseline <= 4
        stats = sinks.stats()["archive"]
    assert stats["sink_peak_open"] == 4
    assert stats["sink_evictions"] > 0
    assert stats["sink_files_open"] == 4
    files = sorted((tmp_path / D0_NAME).iterdir())
    assert len(files) == 40
    for index, path in enumerate(files):
        assert [r["data"]["n"] for r in lines(path)] == list(range(index, 4000, 40))
    assert fd_count() <= baseline  # everything closed on exit


EMFILE_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, sys
    import anyio, orjson
    from sse_batcher import ArchiveSink
    from sse_batcher import Event, Position, StoredEvent

    async def main():
        open_now = len(os.listdir("/proc/self/fd"))
        # Room for a few files only, far fewer than max_open_files=64 assumes.
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 6, hard))
        async with ArchiveSink(sys.argv[1], max_open_files=64, clock=lambda: 86400 * 20000) as sink:
            for b in range(20):
                batch = []
                for i in range(200):
                    n = b * 200 + i
                    data = {"n": n}
                    event = Event("JOB_DONE", f"cat{n % 40:02d}", data, ts=86400 * 20000 + 5)
                    batch.append(StoredEvent(f"e.{n}", Position(n), event, orjson.dumps(data)))
                await sink.write(batch)
            print(json.dumps(sink.stats()))

    anyio.run(main)
    """
)


def test_emfile_evicts_and_retries_instead_of_failing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", EMFILE_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["emfile_retries"] > 0
    assert stats["evictions"] > 0
    assert stats["peak_open"] < 40  # the limit, not max_open_files, bounded it
    assert stats["lines_written"] == 4000
    files = sorted((tmp_path / D0_NAME).iterdir())
    assert len(files) == 40
    for index, path in enumerate(files):
        assert [r["data"]["n"] for r in lines(path)] == list(range(index, 4000, 40))


async def test_failed_group_rolls_back_the_batch_and_the_retry_loses_nothing(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "b"
    blocker.write_text("a file where sink b's directory should be")
    sink = ArchiveSink(tmp_path, partition="{source}/{date}.jsonl", clock=TODAY)
    batch = [stored(n, source="ab"[n % 2]) for n in range(10)]
    async with SinkSet([sink], retry_initial=0.005, retry_max=0.02) as sinks:
        sinks.offer(batch)
        await wait_until(lambda: sinks.stats()["archive"]["failures"] >= 2)
        # Group "a" was appended and undone each time: no partial batch is visible.
        assert (tmp_path / "a" / f"{D0_NAME}.jsonl").stat().st_size == 0
        blocker.unlink()
        await wait_until(lambda: sinks.stats()["archive"]["written"] == 10)
    assert [r["data"]["n"] for r in lines(tmp_path / "a" / f"{D0_NAME}.jsonl")] == [0, 2, 4, 6, 8]
    assert [r["data"]["n"] for r in lines(tmp_path / "b" / f"{D0_NAME}.jsonl")] == [1, 3, 5, 7, 9]


async def test_names_are_sanitised_and_stay_inside_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    hostile = ["../../etc/passwd", "..", ".hidden", "a/b\\c", "x" * 200, "ünï cødé", "/abs"]
    async with ArchiveSink(root, partition="{date}/{source}/{type}.jsonl", clock=TODAY) as sink:
        await sink.write([stored(n, source=s, type="T/..") for n, s in enumerate(hostile)])
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert len(written) == len(hostile)
    assert all(p.startswith(f"{D0_NAME}/") and p.endswith("/T_...jsonl") for p in written)
    assert not any(p.name.startswith(".") for p in root.rglob("*"))
    assert os.listdir(tmp_path) == ["archive"]  # nothing escaped
    assert sanitize("../../etc/passwd") == "_.._.._etc_passwd"
    assert sanitize("..") == "_.."
    assert sanitize(".hidden") == "_.hidden"
    assert sanitize("") == "_"
    assert sanitize("ok-name_1.2") == "ok-name_1.2"
    assert len(sanitize("x" * 500)) == 120


@pytest.mark.parametrize(
    "partition",
    [
        "../{source}.jsonl",
        "/var/{source}.jsonl",
        "{date}//{source}",
        "{foo}.jsonl",
        "{source!r}",
        "{source:>9}",
        "{",
    ],
)
def test_bad_partitions_are_config_errors(tmp_path: Path, partition: str) -> None:
    with pytest.raises(ConfigError):
        ArchiveSink(tmp_path, partition=partition)


def test_other_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ArchiveSink(tmp_path, max_open_files=0)
    with pytest.raises(ConfigError):
        ArchiveSink(tmp_path, partition="{source}.jsonl", retention_days=3)
    with pytest.raises(ConfigError):
        ArchiveSink(tmp_path, error_partition="{date}/{source}-errors.jsonl")


async def test_lifecycle_refuses_use_outside_and_reuse(tmp_path: Path) -> None:
    sink = ArchiveSink(tmp_path)
    with pytest.raises(BatcherClosed):
        await sink.write([stored(1)])
    async with sink:
        await sink.write([])
    with pytest.raises(BatcherClosed):
        await sink.write([stored(1)])
    with pytest.raises(BatcherClosed):
        async with sink:
            pass


async def test_batcher_journal_and_archive_end_to_end(tmp_path: Path) -> None:
    from sse_batcher import SQLiteJournal, SSEEventBatcher

    archive = ArchiveSink(tmp_path / "archive", max_open_files=8)
    async with SQLiteJournal(tmp_path / "events.db") as journal:
        async with SSEEventBatcher(journal, sinks=[archive], window=0.05) as batcher:
            for n in range(600):
                kind = "JOB_FAILED" if n % 97 == 0 else "JOB_STARTED"
                batcher.emit(kind, {"job_id": n}, source=f"worker{n % 30}")
            await batcher.flush()
        stored_events = await journal.read_after(None, 10_000)
    assert stored_events  # the batcher wrote something, or the comparison is empty
    files = [p for p in (tmp_path / "archive").rglob("*.jsonl") if p.name != "error.jsonl"]
    archived = [record for path in files for record in lines(path)]
    assert sorted(r["id"] for r in archived) == sorted(e.id for e in stored_events)
    job_ids = sorted(
        job for r in archived for job in r["data"].get("job_ids", [r["data"].get("job_id")])
    )
    assert job_ids == list(range(600))  # every emitted event is in the files
    errors = [r for p in (tmp_path / "archive").rglob("error.jsonl") for r in lines(p)]
    assert sorted(r["id"] for r in errors) == sorted(
        e.id for e in stored_events if e.event.type.endswith("FAILED")
    )
    assert archive.stats()["files_open"] == 0


def test_file_pool_waits_for_a_claimed_path_and_refuses_after_close(tmp_path: Path) -> None:
    import threading

    from sse_batcher.sinks._file_pool import FilePool

    pool = FilePool(2)
    path = str(tmp_path / "d" / "f.jsonl")
    assert pool.claim(path)  # maintenance is compressing it
    appended = threading.Event()
    writer = threading.Thread(target=lambda: (pool.append(path, b"x\n", 1), appended.set()))
    writer.start()
    assert not appended.wait(0.2)  # the writer waits for the claim (it cannot finish early)
    pool.release(path)
    assert appended.wait(5)
    writer.join()
    assert not pool.claim(path)  # open now: maintenance leaves it alone
    assert pool.append(path, b"y\n", 1) == 2  # returns the size before the write
    pool.truncate(path, 2)
    assert Path(path).read_bytes() == b"x\n"
    pool.close_all()
    assert pool.open_count == 0
    with pytest.raises(OSError, match="closed"):
        pool.append(path, b"z\n", 1)
