"""Connections: 10,000 idle SSE streams on one server process, RSS per connection.

Server: ``python -m sse_batcher serve --heartbeat 2`` (heartbeats on and firing
several times while the streams are held). RLIMIT_NOFILE is raised to the hard
limit before it starts (children inherit it). Clients: two processes
(``bench.sse_client hold``), 5,000 raw-socket streams each, kept open until the
measurement is done.

RSS per connection = (server RSS with every stream open and a few heartbeat
rounds sent - RSS after a warm-up of 20 streams opened and closed) / streams.
The server's /stats must count every stream as a subscriber, and every stream
must have received a heartbeat.

With ``--peers`` (``make bench PEERS=1``) nginx + nchan (``nchan_eventsource_ping_interval``
2 s) and better-sse (``keepAlive`` 2 s) hold the same streams; for every server
the RSS and PSS per stream are summed over its process tree (nginx's master and
worker) from ``/proc/PID/smaps_rollup``, the same before/peak difference.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from . import (
    ROOT,
    Server,
    http_json,
    peers,
    raise_nofile,
    row,
    rss_kb,
    tmpdir,
    tree_cpu_seconds,
    tree_memory_kb,
)

__all__ = ["measure", "run"]

TARGET_KB = 20.0
HEARTBEAT = 2.0
PER_CLIENT = 5000
LIMIT_NOTE = (
    "limit: per-stream framework state, not the hub: uvicorn's protocol, cycle and "
    "transport, the request's task and its coroutine frames through starlette's "
    "middleware, the scope and headers"
)


def _clients(port: int, total: int, number: str = "id") -> list[subprocess.Popen[str]]:
    procs = []
    remaining = total
    while remaining > 0:
        n = min(PER_CLIENT, remaining)
        remaining -= n
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.sse_client",
                    "hold",
                    "--port",
                    str(port),
                    "--subscribers",
                    str(n),
                    "--parallel",
                    "50",
                    "--number",
                    number,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
        )
    return procs


@contextlib.contextmanager
def _server(kind: str, total: int, directory: str) -> Iterator[Server]:
    if kind in peers.KINDS:
        with peers.server(kind, directory, heartbeat=HEARTBEAT) as peer:
            yield peer
        return
    if kind == "ours":
        argv = ["-m", "sse_batcher", "serve", "--port", "{port}", "--log-level", "warning"]
        argv += ["--db", os.path.join(directory, "c.db"), "--heartbeat", str(HEARTBEAT)]
        argv += ["--max-subscribers", str(total + 1000)]
    else:
        argv = ["-m", "bench.naive_server", "--port", "{port}"]
    with Server(argv) as server:
        yield server


def measure(kind: str, total: int) -> dict[str, Any]:
    """``total`` idle streams on ``ours``, ``naive``, ``nchan`` or ``better-sse``."""
    limit = raise_nofile(total + 2000)
    if limit < total + 100:
        raise RuntimeError(f"RLIMIT_NOFILE is {limit}; {total} connections need more")
    number = "job_id" if kind in peers.KINDS else "id"  # nchan's stream is not chunked
    with tmpdir("connections") as directory, _server(kind, total, directory) as server:
        warm = _clients(server.port, 20, number)
        for proc in warm:
            proc.stdout.readline()  # type: ignore[union-attr]
            proc.communicate("", timeout=30)
        time.sleep(0.5)
        before = rss_kb(server.pid)
        tree_before = tree_memory_kb(server.pid)
        started = time.monotonic()
        procs = _clients(server.port, total, number)
        connected = errors = 0
        try:
            for proc in procs:
                line = proc.stdout.readline().split()  # type: ignore[union-attr]
                if not line or line[0] != "ready":
                    raise RuntimeError(f"client failed: {proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
                connected += int(line[1])
                errors += int(line[2])
            connect_s = time.monotonic() - started
            seen = total
            if kind == "ours":
                _, stats = http_json("GET", f"{server.url}/stats")
                seen = stats["hub"]["subscribers"]
            elif kind in peers.KINDS:
                seen = peers.subscribers(kind, server.url)
            # Hold through a few heartbeat rounds; take the highest RSS seen.
            peak = rss_kb(server.pid)
            tree_peak = tree_memory_kb(server.pid)
            held_from = time.monotonic()
            cpu_from = tree_cpu_seconds(server.pid)
            hold_until = held_from + 2.5 * HEARTBEAT
            while time.monotonic() < hold_until:
                time.sleep(0.25)
                peak = max(peak, rss_kb(server.pid))
                now = tree_memory_kb(server.pid)
                tree_peak = (max(tree_peak[0], now[0]), max(tree_peak[1], now[1]))
            # Idle streams: the server's CPU while holding them is the heartbeat rounds.
            hold_cpu = tree_cpu_seconds(server.pid) - cpu_from
            hold_s = time.monotonic() - held_from
            results = []
            for proc in procs:
                out, _ = proc.communicate("", timeout=60)
                import json

                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return {
        "connected": connected,
        "errors": errors,
        "subscribers_seen": seen,
        "with_heartbeat": sum(r["with_heartbeat"] for r in results),
        "alive": sum(r["alive"] for r in results),
        "rss_before_kb": before,
        "hold_cpu_s": hold_cpu,
        "hold_s": hold_s,
        "rss_peak_kb": peak,
        "tree_before_kb": tree_before,
        "tree_peak_kb": tree_peak,
        "connect_s": connect_s,
    }


def peer_rows(label: str, total: int, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per server: streams held (all alive, counted by the server, with heartbeats),
    RSS and PSS per stream over its process tree."""
    rows = []
    for kind, r in results.items():
        whole = r["connected"] == r["alive"] == total
        if kind != "naive":  # the naive broadcaster has no subscriber count or heartbeats
            whole = whole and r["subscribers_seen"] == r["with_heartbeat"] == total
        (rss0, pss0), (rss1, pss1) = r["tree_before_kb"], r["tree_peak_kb"]
        streams = max(1, r["connected"])
        counted = (
            "no subscriber count or heartbeats (sse-starlette pings every 15 s)"
            if kind == "naive"
            else f"{r['subscribers_seen']:,} counted by the server, {r['with_heartbeat']:,} got "
            "heartbeats"
        )
        note = (
            f"{r['connected']:,} connected in {r['connect_s']:.1f} s, {counted}; RSS "
            f"{rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB, PSS {pss0 / 1024:.0f} -> "
            f"{pss1 / 1024:.0f} MiB"
        )
        rows += [
            peers.row(label, kind, "streams held", r["connected"], "streams", f"{total:,}", whole,
                      note),
            peers.row(label, kind, "RSS per stream", (rss1 - rss0) * 1.024 / streams, "KB"),
            peers.row(label, kind, "PSS per stream", (pss1 - pss0) * 1.024 / streams, "KB"),
        ]  # fmt: skip
    return rows


def run(quick: bool, with_peers: bool = False) -> list[dict[str, Any]]:
    total = 1000 if quick else 10_000
    naive = measure("naive", total)
    r = measure("ours", total)
    others = {kind: measure(kind, total) for kind in peers.KINDS if with_peers}
    label = f"connections, {total:,} idle streams"
    per = (r["rss_peak_kb"] - r["rss_before_kb"]) * 1024 / 1000 / max(1, r["connected"])
    naive_per = (
        (naive["rss_peak_kb"] - naive["rss_before_kb"]) * 1024 / 1000 / max(1, naive["connected"])
    )
    whole = (
        r["connected"] == total
        and r["subscribers_seen"] == total
        and r["alive"] == total
        and r["with_heartbeat"] == total
    )
    note = (
        f"{r['connected']:,} connected in {r['connect_s']:.1f} s, {r['subscribers_seen']:,} "
        f"subscribers in /stats, {r['with_heartbeat']:,} got heartbeats (every {HEARTBEAT:g} s); "
        f"RSS {r['rss_before_kb'] / 1024:.0f} -> {r['rss_peak_kb'] / 1024:.0f} MiB"
    )
    scale = 10_000 / max(1, r["connected"])
    round_ms = r["hold_cpu_s"] / (r["hold_s"] / HEARTBEAT) * 1000 * scale
    rows = [
        row(label, "streams held", r["connected"], "streams", f"{total:,}", whole, note),
        row(
            label,
            "server RSS per stream",
            per,
            "KB",
            f"<= {TARGET_KB:g}",
            per <= TARGET_KB,
            "" if per <= TARGET_KB else LIMIT_NOTE,
        ),
        row(
            label,
            "heartbeat CPU per round",
            round_ms,
            "ms per 10,000 streams",
            note=(
                f"server CPU {r['hold_cpu_s']:.2f} s over {r['hold_s']:.1f} s held (a heartbeat "
                f"round every {HEARTBEAT:g} s); at the default 15 s heartbeat that is "
                f"{round_ms / 15_000 * 100:.2f}% of a core per 10,000 streams"
            ),
        ),
        row(
            label,
            "naive broadcaster RSS per stream",
            naive_per,
            "KB",
            note=f"{naive['connected']:,} streams held by the naive sse-starlette broadcaster",
        ),
    ]
    if with_peers:
        rows += peer_rows(label, total, {"sse_batcher": r, **others, "naive": naive})
    return rows


if __name__ == "__main__":
    import json

    for r in run("--quick" in sys.argv):
        print(json.dumps(r))
