"""The benchmarks cannot rot: each scenario's smallest case runs once, for real.

Sizes are tiny, so the numbers mean nothing here and no target is asserted; what
is asserted is that every scenario still runs end to end over loopback and that
its own correctness checks hold (every event written and delivered, in order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from bench import (
    channels,
    connections,
    emit_cost,
    fanout,
    import_time,
    latency,
    persist,
    slow_storage,
    writes_saved,
)
from bench.__main__ import markdown, table

ROOT = Path(__file__).resolve().parent.parent
ROW_KEYS = {"scenario", "metric", "value", "unit", "target", "met"}


def check_rows(rows: list[dict[str, Any]]) -> None:
    assert rows
    for r in rows:
        assert ROW_KEYS <= set(r), r
        assert isinstance(r["value"], float), r
        assert isinstance(r["met"], bool), r


def test_driver_writes_table_and_results(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "writes_saved",
            *["--results", str(results)],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    assert "SSE messages saved vs naive" in completed.stdout
    document = json.loads(results.read_text())
    assert document["machine"]["cores"] == os.cpu_count()
    assert {"cpu", "python", "date"} <= set(document["machine"])
    check_rows(document["rows"])
    batched = [r for r in document["rows"] if r["metric"] == "DB writes, batched"]
    assert 1 <= batched[0]["value"] < 100


def test_table_marks_missed_targets_and_notes() -> None:
    rows = [
        {"bench": "b", "scenario": "s", "metric": "m", "value": 5.0, "unit": "x",
         "target": ">= 8x", "met": False, "note": "limited by the hub"},
        {"bench": "b", "scenario": "s", "metric": "info", "value": 1234.5, "unit": "ms",
         "target": "-", "met": True},
    ]  # fmt: skip
    text = table(rows)
    assert "NOT met" in text
    assert "limited by the hub" in text
    assert "1,234" in text
    assert "**NOT met**" in markdown(rows)


def test_emit_cost_smallest(tmp_path: Path) -> None:
    durations, full = anyio.run(emit_cost.measure, 2, 2000, str(tmp_path))
    assert len(durations) == 4000
    assert full == 0
    assert emit_cost.timer_overhead_ns(1000) >= 0


def test_persist_smallest(tmp_path: Path) -> None:
    assert persist.naive(str(tmp_path / "b.db"), 0.1, wal=True) > 0
    assert persist.raw_executemany(str(tmp_path / "c.db"), 2000) > 0
    plain = anyio.run(persist.through_batcher, str(tmp_path / "p.db"), 2000, False)
    assert plain["rows"] == 2000  # batching off: one row per event
    merged = anyio.run(persist.through_batcher, str(tmp_path / "m.db"), 2000, True)
    assert merged["rows"] < 2000


def test_writes_saved_smallest() -> None:
    rows = writes_saved.run(quick=True)
    check_rows(rows)
    by_metric = {r["metric"]: r["value"] for r in rows}
    assert by_metric["SSE messages, batching off"] == 100
    assert by_metric["SSE messages, batched"] < 100


def test_slow_storage_smallest(tmp_path: Path) -> None:
    batched = slow_storage.measure("batched", str(tmp_path), 1.0, delay=0.2)
    assert batched["requests"] > 0
    assert batched["members"] == batched["statuses"]["202"] == batched["requests"]
    baseline = slow_storage.measure("baseline", str(tmp_path), 1.0, delay=0.2)
    assert baseline["rows"] == baseline["requests"] > 0
    assert baseline["p50_ms"] >= 200


@pytest.mark.parametrize("kind", ["naive", "ours"])
def test_fanout_smallest(tmp_path: Path, kind: str) -> None:
    result = fanout.measure(kind, 10, 0.5, str(tmp_path))
    assert result["posted"] > 0
    assert result["complete"] == result["subscribers"] == 10


def test_channels_smallest(tmp_path: Path) -> None:
    shared = channels.measure(0, 5, 200.0, 0.5, str(tmp_path))
    assert shared["posted"] > 0 and shared["star_received"] == shared["posted"] * 5
    private = channels.measure(50, 5, 200.0, 0.5, str(tmp_path))
    assert private["private_received"] == private["posted"] > 0
    assert private["star_received"] == private["posted"] * 5
    assert private["latencies"] and private["server_cpu_s"] > 0


@pytest.mark.parametrize("kind", ["naive", "ours"])
def test_latency_smallest(tmp_path: Path, kind: str) -> None:
    result = latency.measure(kind, 10, 1.0, str(tmp_path))
    assert result["expected"] > 0
    assert result["received"] == result["expected"]
    assert result["finished"] == 10
    assert all(0 <= x < 5 for x in result["flush"])


def test_connections_smallest() -> None:
    result = connections.measure("ours", 50)
    assert result["connected"] == result["subscribers_seen"] == result["alive"] == 50
    assert result["with_heartbeat"] == 50
    assert result["rss_peak_kb"] > 0


def test_archive_smallest() -> None:
    from bench import archive

    result = anyio.run(partial(archive.scenario, 1000, max_open_files=16, interval=None))
    assert result["rate"] > 0
    assert result["peak_open"] <= 16


def test_hub_wake_cost_smallest(tmp_path: Path) -> None:
    result = anyio.run(latency.wake_cost, str(tmp_path), 10, 2)
    assert result["hub"] > 0
    assert result["queue"] > 0


def test_workers_smallest() -> None:
    from bench import workers

    with workers.tmpdir("test") as directory:
        result = workers.measure(2, directory, 0.5, rates=(200, 400), subscribers=6)
    assert [s["complete"] for s in result["steps"]] == [6, 6]
    assert set(result["stream_workers"]) <= {"0", "1"}
    assert result["best"] is not None


def test_import_time_smallest() -> None:
    rows = import_time.run(quick=True)
    check_rows(rows)
    by_metric = {r["metric"]: r for r in rows}
    assert set(by_metric) == set(import_time.CASES)
    assert "heavy packages loaded: none" in by_metric["publishing worker"]["note"]
    assert "uvicorn" in by_metric["full stack (baseline)"]["note"]
