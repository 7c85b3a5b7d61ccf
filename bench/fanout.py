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

With ``--peers`` (``make bench PEERS=1``) nginx + nchan and better-sse run the
same scenario (``bench.peers``): better-sse takes the same arrays; nchan takes one
event per POST (it has no batch publish), 100 pipelined requests per write. For
the peers the order check reads the producer's sequence number (``job_id``) from
the data, since nchan's ids are its own. Every server's CPU (its process tree,
nginx's master and worker) and its peak RSS and PSS are reported.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from . import MemoryPeak, Server, http_json, peers, row, run_json, tmpdir, tree_cpu_seconds

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


@contextlib.contextmanager
def _server(kind: str, subscribers: int, directory: str) -> Iterator[Server]:
    if kind in peers.KINDS:
        with peers.server(kind, directory) as peer:
            yield peer
        return
    if kind == "ours":
        argv = ["-m", "sse_batcher", "serve", "--port", "{port}", "--log-level", "warning"]
        argv += ["--db", os.path.join(directory, f"fanout-{subscribers}.db")]
        argv += ["--max-subscribers", "20000"]
    else:
        argv = ["-m", "bench.naive_server", "--port", "{port}"]
    with Server(argv) as server:
        yield server


def measure(kind: str, subscribers: int, duration: float, directory: str) -> dict[str, Any]:
    """One server (``ours``, ``naive``, ``nchan`` or ``better-sse``), ``subscribers``
    clients, ``duration`` seconds."""
    extra = []
    if kind in peers.KINDS:
        extra = ["--number", "job_id", "--publish", "single" if kind == "nchan" else "batch"]
    with _server(kind, subscribers, directory) as server:
        if kind == "ours":
            status, _ = http_json("PATCH", f"{server.url}/workers/{SOURCE}", {"batching": False})
            if status != 200:
                raise RuntimeError(f"PATCH /workers answered {status}")
        cpu_before = tree_cpu_seconds(server.pid)
        memory = MemoryPeak(server.pid)
        with memory:
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
                    *extra,
                ],
                timeout=120,
            )
        result["server_cpu_s"] = tree_cpu_seconds(server.pid) - cpu_before
        result["rss_kb"], result["pss_kb"] = memory.rss_kb, memory.pss_kb
        if kind == "ours":
            _, stats = http_json("GET", f"{server.url}/stats")
            result["slow_disconnects"] = stats["hub"]["slow_disconnects"]
    return result


def run(quick: bool, with_peers: bool = False) -> list[dict[str, Any]]:
    counts = (100,) if quick else (10, 100, 1000)
    duration = 2.0 if quick else 4.0
    rows: list[dict[str, Any]] = []
    with tmpdir("fanout") as directory:
        for n in counts:
            naive = measure("naive", n, duration, directory)
            ours = measure("ours", n, duration, directory)
            label = f"fan-out, {n:,} subscribers"
            others = {k: measure(k, n, duration, directory) for k in peers.KINDS if with_peers}
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
            if with_peers:
                rows.extend(peer_rows(label, {"sse_batcher": ours, "naive": naive, **others}))
    return rows


def peer_rows(label: str, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Side-by-side rows: deliveries/s, CPU per delivery, peak RSS and PSS per server."""
    rows = []
    for kind, r in results.items():
        n = r["subscribers"]
        whole = r["complete"] == n
        note = (
            f"{r['complete']}/{n} subscribers got all {r['posted']:,} events in order; "
            f"POST statuses {r['post_status']}; CPU server {r['server_cpu_s']:.1f} s, "
            f"load generator {r['client_cpu_s']:.1f} s"
        )
        per = r["server_cpu_s"] / max(1, r["posted"] * n) * 1e6
        rows += [
            peers.row(label, kind, "deliveries/s", r["rate"], "events/s", "all delivered", whole,
                      note),
            peers.row(label, kind, "server CPU per delivery", per, "µs"),
            peers.row(label, kind, "server peak RSS", r["rss_kb"] / 1024, "MiB"),
            peers.row(label, kind, "server peak PSS", r["pss_kb"] / 1024, "MiB"),
        ]  # fmt: skip
    return rows


if __name__ == "__main__":
    import json

    quick = "--quick" in sys.argv
    for r in run(quick):
        print(json.dumps(r))
