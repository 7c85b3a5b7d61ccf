"""Overload: producers faster than the journal.

The server (a subprocess, so its RSS is its own) has a journal slowed to 1 ms per
event and a pending bound of 1,000 events. Publishers post 100-event requests as fast
as they can. Checked: the pending queue never passes its bound, RSS stays flat, the
overflow policy is applied and counted (503 + Retry-After for ``reject``; counted
drops for ``drop_oldest``), and accepted = stored + counted drops, exactly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import orjson
import pytest

from .helpers import poll, rss_kib, stored_values
from .serve_custom import CustomServer

pytestmark = pytest.mark.anyio

MAX_PENDING = 1000
PER_POST = 100
# Generous bounds. The queue holds at most ~1,000 events of ~150 bytes (< 1 MiB), so
# memory must not grow with the load's duration: after a warm-up (measured: +50 MiB
# in the first ~1.5 s for SQLite's cache, allocator arenas and socket buffers, then
# flat within 2 MiB) it may grow by 16 MiB at most; in total by 128 MiB at most.
RSS_GROWTH_LIMIT_KIB = 128 * 1024
RSS_FLAT_LIMIT_KIB = 16 * 1024
WARMUP_SAMPLES = 10  # 2.5 s at one sample per 0.25 s


class Producers:
    def __init__(self, url: str) -> None:
        self.url = url
        self.accepted: list[int] = []
        self.refused_events = 0
        self.refused_posts = 0
        self.without_retry_after = 0
        self.next = 0

    async def run(self, stop: anyio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            while not stop.is_set():
                first, self.next = self.next, self.next + PER_POST
                body = [
                    {"type": f"T{i % 7}", "source": f"s{i % 3}", "data": {"seq": i, "p": "y" * 64}}
                    for i in range(first, first + PER_POST)
                ]
                response = await client.post(
                    "/events",
                    content=orjson.dumps(body),
                    headers={"content-type": "application/json"},
                )
                if response.status_code == 202:
                    assert response.json()["accepted"] == PER_POST
                    self.accepted.extend(range(first, first + PER_POST))
                elif response.status_code == 503:
                    self.refused_posts += 1
                    self.refused_events += PER_POST
                    if "retry-after" not in response.headers:
                        self.without_retry_after += 1
                    await anyio.lowlevel.checkpoint()  # ignore Retry-After on purpose
                else:
                    raise AssertionError(f"{response.status_code}: {response.text}")


async def overload(tmp_path: Path, policy: str, seconds: float) -> dict[str, Any]:
    db = tmp_path / "overload.db"
    settings = {
        "db": str(db),
        "append_delay_per_event": 0.001,
        "batcher": {"window": 0.05, "max_pending_events": MAX_PENDING, "overflow": policy},
    }
    samples: list[tuple[int, int, int]] = []  # (queue_depth, queue_bytes, rss KiB)
    async with CustomServer(settings) as server:
        assert server.process is not None
        pid = server.process.pid
        producers = Producers(server.url)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def sample(stop: anyio.Event) -> None:
                while not stop.is_set():
                    batcher = (await client.get("/stats")).json()["batcher"]
                    samples.append((batcher["queue_depth"], batcher["queue_bytes"], rss_kib(pid)))
                    with anyio.move_on_after(0.25):
                        await stop.wait()

            baseline = rss_kib(pid)
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(sample, stop)
                for _ in range(4):
                    tg.start_soon(producers.run, stop)
                await anyio.sleep(seconds)  # the load's duration, not synchronisation
                stop.set()

            async def drained() -> bool:
                return (await client.get("/stats")).json()["batcher"]["queue_depth"] == 0

            await poll(drained, 30, "the journal to catch up")
        await anyio.to_thread.run_sync(server.stop)
        assert server.returncode == 0, server.output()
        summary = server.summary()
    stored = stored_values(db)
    depth_peak = max(s[0] for s in samples)
    rss = [s[2] for s in samples]
    third = max(1, len(rss) // 3)
    return {
        "producers": producers,
        "stored": stored,
        "summary": summary,
        "depth_peak": depth_peak,
        "bytes_peak": max(s[1] for s in samples),
        "rss_growth_kib": max(rss) - baseline,
        "rss_drift_kib": sum(rss[-third:]) / third - sum(rss[:third]) / third,
        "samples": len(samples),
        "rss": rss,
        # Warm-up (SQLite cache, allocator arenas, buffers) takes ~1.5 s: after it, flat.
        "rss_after_warmup_kib": max(rss[WARMUP_SAMPLES:]) - max(rss[:WARMUP_SAMPLES]),
    }


def check(result: dict[str, Any], policy: str) -> str:
    producers: Producers = result["producers"]
    stored: list[int] = result["stored"]
    summary = result["summary"]
    dropped = summary["dropped"]
    assert result["samples"] > WARMUP_SAMPLES
    assert result["depth_peak"] <= MAX_PENDING + PER_POST, result["depth_peak"]
    assert result["rss_growth_kib"] < RSS_GROWTH_LIMIT_KIB, result["rss"]
    assert result["rss_after_warmup_kib"] < RSS_FLAT_LIMIT_KIB, result["rss"]
    assert len(stored) == len(set(stored)), "stored twice"
    assert set(stored) <= set(producers.accepted), "stored something never acknowledged"
    assert summary["events_in"] == len(producers.accepted)
    assert dropped["invalid"] == 0 and summary["dead_letter_pending"] == 0
    if policy == "reject":
        assert producers.refused_posts > 0, "the journal kept up: no overload happened"
        assert producers.without_retry_after == 0, "a 503 without Retry-After"
        assert dropped["queue_full"] == producers.refused_events
        assert sorted(stored) == sorted(producers.accepted), "an accepted event was lost"
    else:
        assert producers.refused_posts == 0
        assert dropped["drop_oldest"] > 0, "the journal kept up: no overload happened"
        # Nothing silent: every accepted event is stored or counted as dropped.
        assert len(producers.accepted) == len(stored) + dropped["drop_oldest"]
    return (
        f"[overload {policy}] accepted={len(producers.accepted)} stored={len(stored)} "
        f"refused={producers.refused_events} (in {producers.refused_posts} 503s) "
        f"dropped={dropped} queue_peak={result['depth_peak']}/{MAX_PENDING} "
        f"bytes_peak={result['bytes_peak']} rss_growth={result['rss_growth_kib']} KiB "
        f"after_warmup={result['rss_after_warmup_kib']} KiB"
    )


@pytest.mark.parametrize("policy", ["reject", "drop_oldest"])
async def test_overload_is_bounded_and_counted(
    tmp_path: Path, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await overload(tmp_path, policy, float(os.environ.get("OVERLOAD_SECONDS", 6)))
    line = check(result, policy)
    with capsys.disabled():
        print("\n" + line)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("policy", ["reject", "drop_oldest"])
async def test_overload_60_seconds(
    tmp_path: Path, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    result = await overload(tmp_path, policy, float(os.environ.get("SOAK_SECONDS", 60)))
    line = check(result, policy)
    # Flat over a minute: the last third of the run uses no more than the first third.
    assert result["rss_drift_kib"] < 10 * 1024, result
    with capsys.disabled():
        print(f"\n{line} ({time.monotonic() - started:.0f} s)")


async def test_written_events_are_not_retained(tmp_path: Path) -> None:
    """After a flush nothing written may stay in memory: with 30 KB events, 384 written
    batches (115 MB of data) must leave < 16 MiB traced, whatever the queue bound."""
    import gc
    import tracemalloc

    from sse_batcher import Event, SQLiteJournal, SSEEventBatcher

    async with (
        SQLiteJournal(tmp_path / "r.db") as journal,
        SSEEventBatcher(
            journal, window=0.05, max_pending_bytes=8 * 2**20, overflow="reject"
        ) as batcher,
    ):
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(4 * 48):
                events = [
                    Event.create(f"BIG_{i}", {"pad": "f" * 30000}, source="s") for i in range(20)
                ]
                await batcher.offer_blocking(events)
                await batcher.flush()
            gc.collect()
            retained = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert retained < 16 * 2**20, f"{retained / 2**20:.0f} MiB retained after flush"
