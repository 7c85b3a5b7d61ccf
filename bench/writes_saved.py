"""Writes saved: the scenario of seed 000, 100 job events from three workers.

Seed 000 (batch logging): 100 log lines during a job were 100 API calls, 100
database writes and 100 UI broadcasts before batching (flush at 10 or every 2 s).
Here three worker threads (34/33/33 events) each run their own job and emit its
setup-log lines as ``JOB_LOG`` events, one every 5-30 ms (seeded jitter), through a
real SSEEventBatcher + SQLiteJournal with the default settings (window 0.5 s,
max_batch 10); one Hub subscriber receives the SSE bytes a browser would get.

    naive      one INSERT + COMMIT and one SSE message per event (measured with
               sqlite3 and counted: 100 and 100 by construction)
    unbatched  the same service with batching switched off for the three workers
    batched    the default (trailing edge: a group waits its window)
    leading    ``flush="leading"``: the first event after a quiet window goes out at
               once, the ones that follow it are merged

Isolated events (one every 0.55 s, longer than the window) measure what the leading
edge is for: emit to the subscriber's bytes, p50, in both modes.

DB writes = journal transactions; SSE messages = ``id:`` lines the subscriber got.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import time
from typing import Any

import anyio
import anyio.to_thread

from sse_batcher import Hub, SQLiteJournal, SSEEventBatcher
from sse_batcher.batching._rules import Flush

from . import row, tmpdir

__all__ = ["naive", "run", "service"]

WORKERS = {"worker-1": 34, "worker-2": 33, "worker-3": 33}
TARGET_SAVED = 90.0


def _schedule(seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    return {name: [rng.uniform(0.005, 0.030) for _ in range(n)] for name, n in WORKERS.items()}


def _worker(batcher: SSEEventBatcher, name: str, gaps: list[float], job: int) -> None:
    for line, gap in enumerate(gaps):
        time.sleep(gap)
        batcher.emit(
            "JOB_LOG",
            {"job_id": job, "level": "info", "message": f"setup step {line} of job {job}"},
            source=name,
        )


async def service(
    path: str, batching: bool, seed: int, max_batch: int = 10, flush: Flush = "trailing"
) -> dict[str, int]:
    """Run the three workers through the batcher; count transactions and SSE messages."""
    received = bytearray()
    async with (
        SQLiteJournal(path) as journal,
        Hub(journal) as hub,
        SSEEventBatcher(journal, max_batch=max_batch, flush=flush) as batcher,
    ):
        for name in WORKERS:
            batcher.set_batching(name, batching)
        got_all = anyio.Event()

        async def subscriber(task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            async with hub.subscribe() as chunks:
                task_status.started()
                async for chunk in chunks:
                    received.extend(chunk)
                    if got_all.is_set():
                        return

        async with anyio.create_task_group() as tg:
            await tg.start(subscriber)
            schedule = _schedule(seed)
            async with anyio.create_task_group() as workers:
                for job, (name, gaps) in enumerate(schedule.items(), start=1):
                    workers.start_soon(anyio.to_thread.run_sync, _worker, batcher, name, gaps, job)
            await batcher.flush()
            written = batcher.stats().members_out
            with anyio.fail_after(10):
                while received.count(b"\nid: ") + received.startswith(b"id: ") < (  # noqa: ASYNC110
                    batcher.stats().messages_out
                ):
                    await anyio.sleep(0.01)
            got_all.set()
            tg.cancel_scope.cancel()
        transactions = int(journal.stats()["transactions"])
    return {
        "events": written,
        "writes": transactions,
        "messages": received.count(b"\nid: ") + received.startswith(b"id: "),
    }


async def isolated_latency(path: str, flush: Flush, count: int) -> float:
    """p50 seconds from emit() to the subscriber's bytes for events a window apart."""
    sent: list[float] = []
    latencies: list[float] = []
    async with (
        SQLiteJournal(path) as journal,
        Hub(journal) as hub,
        SSEEventBatcher(journal, flush=flush) as batcher,
        hub.subscribe() as chunks,
    ):
        for n in range(count):
            sent.append(time.monotonic())
            batcher.emit("JOB_STARTED", {"job_id": n}, source="isolated")
            with anyio.fail_after(5):
                async for chunk in chunks:
                    if b"\nid: " in chunk or chunk.startswith(b"id: "):
                        latencies.append(time.monotonic() - sent[-1])
                        break
            await anyio.sleep(0.55)  # longer than the 0.5 s window: each one is isolated
    latencies.sort()
    return latencies[len(latencies) // 2]


def naive(path: str) -> dict[str, int]:
    """One INSERT + COMMIT and one message per event: counted, not assumed."""
    writes = messages = 0
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, data TEXT)")
        for n in range(sum(WORKERS.values())):
            conn.execute("INSERT INTO events (data) VALUES (?)", (f"line {n}",))
            conn.commit()
            writes += 1
            messages += 1  # one broadcast per event
    finally:
        conn.close()
    return {"events": sum(WORKERS.values()), "writes": writes, "messages": messages}


def run(quick: bool) -> list[dict[str, Any]]:
    seed = 0
    with tmpdir("writes") as d:
        before = naive(os.path.join(d, "naive.db"))
        plain = anyio.run(service, os.path.join(d, "plain.db"), False, seed)
        batched = anyio.run(service, os.path.join(d, "batched.db"), True, seed)
        tuned = anyio.run(service, os.path.join(d, "tuned.db"), True, seed, 20)
        leading = anyio.run(service, os.path.join(d, "leading.db"), True, seed, 10, "leading")
        count = 4 if quick else 10
        alone = {
            mode: anyio.run(isolated_latency, os.path.join(d, f"alone-{mode}.db"), mode, count)
            for mode in ("trailing", "leading")
        }
    total = sum(WORKERS.values())
    label = "writes saved: seed 000, 100 job events, 3 workers"
    rows = []
    for what in ("writes", "messages"):
        unit = "DB writes" if what == "writes" else "SSE messages"
        rows.append(row(label, f"{unit}, naive (1 per event)", before[what], unit))
        rows.append(row(label, f"{unit}, batching off", plain[what], unit))
        saved = 100.0 * (1 - batched[what] / before[what])
        note = f"{batched[what]} {unit} for {batched['events']} of {total} events"
        if what == "messages" and saved < TARGET_SAVED:
            note += (
                "; limit: max_batch=10 and one group per (source, type), so 34/33/33 events "
                "need at least 4+4+4 = 12 messages"
            )
        rows.append(row(label, f"{unit}, batched", batched[what], unit))
        rows.append(row(label, f"{unit}, batched, max_batch=20", tuned[what], unit))
        rows.append(row(label, f"{unit}, batched, leading edge", leading[what], unit))
        rows.append(
            row(
                label,
                f"{unit} saved vs naive, leading edge",
                100.0 * (1 - leading[what] / before[what]),
                "%",
                note="the first event of each burst goes alone; the rest are merged",
            )
        )
        rows.append(
            row(
                label,
                f"{unit} saved vs naive",
                saved,
                "%",
                f">= {TARGET_SAVED:g}%",
                saved >= TARGET_SAVED and batched["events"] == total,
                note,
            )
        )
    label = "leading edge: isolated events (one every 0.55 s, window 0.5 s)"
    trailing_ms, leading_ms = alone["trailing"] * 1000, alone["leading"] * 1000
    rows.append(row(label, "emit to subscriber p50, trailing (default)", trailing_ms, "ms"))
    rows.append(
        row(
            label,
            "emit to subscriber p50, leading",
            leading_ms,
            "ms",
            "<= 50 ms",
            leading_ms <= 50,
            f"{trailing_ms / max(leading_ms, 0.001):.0f}x sooner than trailing in the same run",
        )
    )
    return rows


if __name__ == "__main__":
    import json

    for r in run("--quick" in sys.argv):
        print(json.dumps(r))
