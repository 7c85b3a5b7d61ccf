"""GET /metrics as Prometheus reads it: promtool accepts it, base units, every number typed.

The app runs for real (SQLite journal, an archive sink, events posted over HTTP) and
``promtool check metrics`` (Debian's prometheus package; ``scripts/install-promtool``)
lints what it serves. A Redis journal's counters are checked the same way.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sse_batcher import ArchiveSink, RedisJournal, SQLiteJournal, SSEEventBatcher, create_app
from tests.conftest import require_service
from tests.servers import app_client
from tests.test_app import event


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        require_service(
            "promtool", "install Debian's prometheus package (scripts/install-promtool)"
        )
    assert path is not None
    return path


def check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


def families(text: str) -> dict[str, str]:
    """metric name -> type, from the # TYPE lines."""
    return {
        line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")
    }


async def scrape(journal: SQLiteJournal | RedisJournal, tmp_path: Path) -> str:
    sink = ArchiveSink(tmp_path / "archive")
    app = create_app(SSEEventBatcher(journal, window=0.05, sinks=[sink]))
    async with app_client(app) as client:
        await client.post("/events", json=[event(1), event(2), {**event(3), "type": "PING"}])
        await app.state.batcher.flush()
        response = await client.get("/metrics")
        assert response.status_code == 200
        return response.text


@pytest.mark.anyio
async def test_promtool_accepts_the_metrics_of_a_running_app(tmp_path: Path) -> None:
    text = await scrape(SQLiteJournal(tmp_path / "events.db"), tmp_path)
    result = check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        # what issue 15 found in our old output
        ("# HELP x_ms a\n# TYPE x_ms gauge\nx_ms 1\n", "abbreviated units"),
        ("# HELP x a\n# TYPE x counter\nx 1\n", '"_total" suffix'),
        ("# TYPE x untyped\nx 1\n", "no help text"),
        ("# HELP x_total a\n# TYPE x_total counter\nx_total 1\n" * 2, "second HELP"),
    ],
)
def test_promtool_is_not_a_rubber_stamp(text: str, complaint: str) -> None:
    result = check(text)
    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr


@pytest.mark.anyio
async def test_base_units_every_number_typed_one_metric_per_meaning(tmp_path: Path) -> None:
    text = await scrape(SQLiteJournal(tmp_path / "events.db"), tmp_path)
    types = families(text)
    assert "untyped" not in types.values(), [n for n, t in types.items() if t == "untyped"]
    assert not [n for n in types if n.endswith("_ms") or "_ms_" in n]
    assert types["sse_batcher_queue_time_p99_seconds"] == "gauge"
    assert types["sse_batcher_journal_rows_written_total"] == "counter"
    assert types["sse_batcher_journal_last_append_seconds"] == "gauge"
    # a sink's figures: one metric each, the sink as a label; drops split by reason only
    assert 'sse_batcher_sink_written_total{sink="archive"}' in text
    assert 'sse_batcher_sink_dropped_total{reason="overflow",sink="archive"} 0.0' in text
    assert not [line for line in text.splitlines() if 'kind="' in line]
    assert 'sse_batcher_flushes_total{reason="time"}' in text
    assert 'sse_batcher_dropped_total{reason="queue_full"} 0.0' in text


@pytest.mark.anyio
@pytest.mark.redis
async def test_every_redis_journal_counter_is_typed(redis_url: str, tmp_path: Path) -> None:
    text = await scrape(RedisJournal(redis_url, prefix=f"metrics-{tmp_path.name}"), tmp_path)
    types = families(text)
    journal = {n: t for n, t in types.items() if n.startswith("sse_batcher_journal_")}
    assert journal["sse_batcher_journal_tail_reconnects_total"] == "counter"
    assert "untyped" not in journal.values()
    result = check(text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_catalogue_types_every_journal_counter() -> None:
    from dataclasses import fields

    from sse_batcher.journals._counters import RedisCounters, SQLiteCounters
    from sse_batcher.service._metrics import CATALOGUE

    for counters in (SQLiteCounters, RedisCounters):
        missing = {f.name for f in fields(counters)} - set(CATALOGUE["journal"])
        assert not missing, f"{counters.__name__}: {missing} would be untyped"
