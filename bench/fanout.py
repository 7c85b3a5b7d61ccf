"""Fan-out: events/s delivered in total to 10, 100 and 1,000 SSE subscribers.

Server: ``python -m sse_batcher serve`` (uvloop + httptools, SQLite journal) in its
own process, against the naive sse-starlette broadcaster (``bench.naive_server``)
in the same run. Events arrive through the real path: ``POST /events`` with arrays
of 100 events from the client process; the producer's source has batching
switched off (``PATCH /workers/…``) so every event is one SSE message on both
servers and the counts compare like for like.

Client: one process (``bench.sse_client fanout``) with raw-socket subscribers on
uvloop that count ``id:`` lines (not httpx-sse, which would be the bottleneck).
The producer keeps at most ``WINDOW`` events posted but not yet received by the
slowest subscriber (closed loop), so the server runs flat out without any
subscriber overflowing its buffer. Every subscriber must receive every event, in
order and without gaps (first id, last id and count agree), or the row says so.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from . import Server, http_json, row, run_json, tmpdir

__all__ = ["cpu_seconds", "measure", "run"]

WINDOW = 900  # events in flight; the hub's per-subscriber buffer holds 1,000
BATCH = 100  # events per POST
TARGET_RATIO = 8.0
TARGET_RATE = 150_000
SOURCE = "bench-producer"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, subscribers: int, duration: float, directory: str) -> dict[str, Any]:
    """One server (``ours`` or ``naive``), ``subscribers`` clients, ``duration`` seconds."""
    if kind == "ours":
        argv = ["-m", "sse_batcher", "serve", "--port", "{port}", "--log-level", "warning"]
        argv += ["--db", os.path.join(directory, f"fanout-{subscribers}.db")]
        argv += ["--max-subscribers", "20000"]
    else:
        argv = ["-m", "bench.naive_server", "--port", "{port}"]
    with Server(argv) as server:
        if kind == "ours":
            status, _ = http_json("PATCH", f"{server.url}/workers/{SOURCE}", {"batching": False})
            if status != 200:
                raise RuntimeError(f"PATCH /workers answered {status}")
        cpu_before = cpu_seconds(server.pid)
        result: dict[str, Any] = run_json(
            [
                "-m",
                "bench.sse_client",
                "fanout",
                "--port",
                str(server.port),
                "--subscribers",
                str(subscribers),
                "--duration",
                str(duration),
                "--warmup",
                "0.5",
                "--batch",
                str(BATCH),
                "--window",
                str(WINDOW),
                "--source",
                SOURCE,
            ],
            timeout=120,
        )
        result["server_cpu_s"] = cpu_seconds(server.pid) - cpu_before
        if kind == "ours":
            _, stats = http_json("GET", f"{server.url}/stats")
            result["slow_disconnects"] = stats["hub"]["slow_disconnects"]
    return result


def run(quick: bool) -> list[dict[str, Any]]:
    counts = (100,) if quick else (10, 100, 1000)
    duration = 2.0 if quick else 4.0
    rows: list[dict[str, Any]] = []
    with tmpdir("fanout") as directory:
        for n in counts:
            naive = measure("naive", n, duration, directory)
            ours = measure("ours", n, duration, directory)
            label = f"fan-out, {n:,} subscribers"
            for name, r in (("naive broadcaster", naive), ("sse_batcher", ours)):
                whole = r["complete"] == r["subscribers"]
                note = (
                    f"{r['complete']}/{r['subscribers']} subscribers got all "
                    f"{r['posted']:,} events in order; server CPU "
                    f"{r['server_cpu_s'] / max(1, r['posted'] * n) * 1e6:.1f} µs per delivery"
                )
                target, met = "all delivered", whole
                if name == "sse_batcher" and n == 100:
                    target, met = f">= {TARGET_RATE:,}", whole and r["rate"] >= TARGET_RATE
                rows.append(
                    row(label, f"{name} deliveries/s", r["rate"], "events/s", target, met, note)
                )
            ratio = ours["rate"] / naive["rate"]
            target, met = (
                ("-", True) if n != 100 else (f">= {TARGET_RATIO:g}x", ratio >= TARGET_RATIO)
            )
            rows.append(row(label, "sse_batcher / naive", ratio, "x", target, met))
    return rows


if __name__ == "__main__":
    import json

    quick = "--quick" in sys.argv
    for r in run(quick):
        print(json.dumps(r))
