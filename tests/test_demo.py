"""The demo workers in-process, and ``sse-batcher demo`` as a user runs it."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest

from sse_batcher import BatcherClosed, ConfigError, SQLiteJournal, SSEEventBatcher, StoredEvent
from sse_batcher.cli._demo_workers import DEMO_RULES, OVERLAY_LOGGER, DemoWorkers

from .conftest import free_port

pytestmark = pytest.mark.anyio


async def run_demo_until(
    db: Path, seed: int, done: Callable[[list[StoredEvent]], bool]
) -> list[StoredEvent]:
    """Run the workers fast until ``done(journal rows)``; 20 s at most."""
    async with (
        SQLiteJournal(db) as journal,
        SSEEventBatcher(journal, rules=DEMO_RULES, window=0.1) as batcher,
    ):
        async with DemoWorkers(batcher, seed=seed, speed=8.0) as workers:
            assert workers.seed == seed
            with anyio.fail_after(20):
                while True:  # polling the journal with a deadline
                    if done(await journal.read_after(None, 100_000)):
                        break
                    await anyio.sleep(0.05)
            assert workers.events_emitted() > 0
        await batcher.flush()
        stats = batcher.stats()
        # Count reconciliation: every emitted event is written or coalesced.
        assert stats.events_in == stats.members_out + stats.coalesced + stats.dropped_total
        return await journal.read_after(None, 100_000)


def by_source(rows: list[StoredEvent], source: str) -> list[StoredEvent]:
    return [r for r in rows if r.event.source == source]


async def test_workers_show_bursts_unbatched_worker_and_logs(tmp_path: Path) -> None:
    def done(rows: list[StoredEvent]) -> bool:
        seen = {(r.event.source, r.event.type) for r in rows}
        return (
            ("scheduler_worker", "JOBS_BATCH_STARTED") in seen
            and ("overlay_worker", "JOB_COMPLETED") in seen
            and any(source == OVERLAY_LOGGER for source, _ in seen)
        )

    rows = await run_demo_until(tmp_path / "demo.db", 7, done)

    burst = next(r for r in by_source(rows, "scheduler_worker"))
    assert burst.event.type == "JOBS_BATCH_STARTED"
    assert 3 <= burst.event.data["batch_count"] <= 8
    assert all({"job_id", "camera_id", "kind"} <= set(i["data"]) for i in burst.event.data["items"])

    # use_batching=False: every overlay event goes out on its own.
    overlay = by_source(rows, "overlay_worker")
    assert overlay and all("_BATCH_" not in r.event.type for r in overlay)
    assert {r.event.type for r in overlay} <= {
        "JOB_STARTED",
        "JOB_PROGRESS",
        "JOB_COMPLETED",
        "JOB_FAILED",
    }

    logs = by_source(rows, OVERLAY_LOGGER)
    messages = [
        item["message"]
        for r in logs
        for item in (
            [i["data"] for i in r.event.data["items"]]
            if "items" in r.event.data
            else [r.event.data]
        )
    ]
    assert any(m.startswith("Creating worktree for job") for m in messages)
    assert any(re.fullmatch(r"Rendering overlay for camera \d+", m) for m in messages)
    # The demo's logger is left as it was found.
    assert not logging.getLogger(OVERLAY_LOGGER).handlers


async def test_progress_is_coalesced_per_job(tmp_path: Path) -> None:
    def done(rows: list[StoredEvent]) -> bool:
        return any(r.event.type == "JOBS_BATCH_PROGRESS" for r in rows)

    rows = await run_demo_until(tmp_path / "demo.db", 3, done)
    for row in rows:
        if row.event.type == "JOBS_BATCH_PROGRESS":
            ids = row.event.data["job_ids"]
            assert len(ids) == len(set(ids)), "latest mode keeps one progress per job"


async def test_same_seed_same_jobs(tmp_path: Path) -> None:
    def first_burst(rows: list[StoredEvent]) -> bool:
        return any(r.event.source == "scheduler_worker" for r in rows)

    def burst(rows: list[StoredEvent]) -> list[object]:
        row = next(r for r in rows if r.event.source == "scheduler_worker")
        return [item["data"] for item in row.event.data["items"]]

    a = burst(await run_demo_until(tmp_path / "a.db", 11, first_burst))
    b = burst(await run_demo_until(tmp_path / "b.db", 11, first_burst))
    c = burst(await run_demo_until(tmp_path / "c.db", 12, first_burst))
    assert a == b
    assert a != c


async def test_demo_workers_refuse_reuse_and_bad_speed(tmp_path: Path) -> None:
    async with (
        SQLiteJournal(tmp_path / "demo.db") as journal,
        SSEEventBatcher(journal, window=0.1) as batcher,
    ):
        with pytest.raises(ConfigError):
            DemoWorkers(batcher, speed=0)
        workers = DemoWorkers(batcher, seed=1)
        async with workers:
            pass
        with pytest.raises(BatcherClosed):
            async with workers:
                pass


def test_cli_demo_runs_for_a_duration_and_prints_a_summary(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "demo.db"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sse_batcher",
            "demo",
            "--duration",
            "3",
            "--port",
            str(port),
            "--db",
            str(db),
            "--seed",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"Open http://127.0.0.1:{port}/ to watch events batch live" in proc.stdout
    numbers = {
        name: int(value)
        for name, value in re.findall(
            r"^\s+(events in|messages out|database writes)\s+(\d+)", proc.stdout, re.M
        )
    }
    assert set(numbers) == {"events in", "messages out", "database writes"}, proc.stdout
    assert numbers["events in"] > numbers["messages out"] > 0
    assert numbers["messages out"] >= numbers["database writes"] > 0
    assert re.search(r"messages out .*\(\d+% saved\)", proc.stdout)
    assert db.exists(), "--db names the journal file, kept after the run"
    assert "Traceback" not in proc.stderr


def test_example_backend_streams_batches_and_stops_cleanly(tmp_path: Path) -> None:
    """demo/timelapse_backend.py, the example users copy, runs as documented."""
    port = free_port()
    example = Path(__file__).parents[1] / "demo" / "timelapse_backend.py"
    proc = subprocess.Popen(
        [sys.executable, str(example), "--port", str(port), "--db", str(tmp_path / "t.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + 20
        wanted = {("thumbnail_worker", "JOBS_BATCH_STARTED"), ("overlay_worker", "JOB_STARTED")}
        while not wanted <= seen:  # polling the server with a deadline
            assert time.monotonic() < deadline, f"saw only {sorted(seen)}"
            assert proc.poll() is None, proc.communicate()[1]
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/sse/events/history?limit=1000")
            except httpx.TransportError:
                response = None  # not listening yet
            if response is not None and response.status_code == 200:
                seen = {(e["source"], e["type"]) for e in response.json()["events"]}
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"Open http://127.0.0.1:{port}/sse/" in out
    assert "Traceback" not in err
