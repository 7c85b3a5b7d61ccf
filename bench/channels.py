"""Channels: fan-out cost with 10,000 private channels against one shared channel.

Private run: 10,000 subscribers each on its own channel (``?channel=user.<n>``),
100 more on ``*``; 2,000 events/s, each on a random private channel, so every
event goes to 101 subscribers. Shared run (the baseline, same process layout):
100 subscribers on one channel, 2,000 events/s on it: 100 deliveries per event.

The hub indexes subscribers by channel, so an event costs its matching
subscribers, not all 10,100: the target is server CPU per event within 2x of the
shared run's. Events arrive through ``POST /events`` (arrays of 100 every 50 ms)
on ``sse-batcher serve`` with batching off for the producer, so each event is one
SSE message; latency is send → receipt (one clock: the client process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from . import ROOT, Server, http_json, percentile, row, tmpdir, tree_cpu_seconds

__all__ = ["measure", "run"]

TARGET_CPU_RATIO = 2.0
SOURCE = "bench-producer"


def measure(
    private: int, star: int, rate: float, duration: float, directory: str
) -> dict[str, Any]:
    """One server, ``private`` private streams + ``star`` streams on ``*`` (or, with
    ``private == 0``, ``star`` streams on one shared channel)."""
    argv = ["-m", "sse_batcher", "serve", "--port", "{port}", "--log-level", "warning"]
    argv += ["--db", os.path.join(directory, f"channels-{private}.db")]
    argv += ["--max-subscribers", "20000"]
    with Server(argv) as server:
        status, _ = http_json("PATCH", f"{server.url}/workers/{SOURCE}", {"batching": False})
        if status != 200:
            raise RuntimeError(f"PATCH /workers answered {status}")
        client = [
            sys.executable,
            "-m",
            "bench.channels_client",
            "--port",
            str(server.port),
            "--private",
            str(private),
            "--star",
            str(star),
            "--star-channel",
            "*" if private else "shared",
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--source",
            SOURCE,
        ]
        # Server CPU is read between the client's "ready" (every stream open) and
        # "posted" (the last POST answered): connecting 10,000 streams is not part
        # of what an event costs.
        with subprocess.Popen(
            client, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        ) as process:
            assert process.stdin is not None and process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("the channels client did not start")
            cpu = [tree_cpu_seconds(server.pid)]
            process.stdin.write("go\n")
            process.stdin.flush()
            if process.stdout.readline().strip() != "posted":
                raise RuntimeError("the channels client did not finish posting")
            cpu.append(tree_cpu_seconds(server.pid))
            last = process.stdout.read().strip().splitlines()[-1]
            if process.wait(timeout=120) != 0:
                raise RuntimeError(f"the channels client exited with {process.returncode}")
        result: dict[str, Any] = json.loads(last)
        _, stats = http_json("GET", f"{server.url}/stats")
    result["server_cpu_s"] = cpu[1] - cpu[0]
    result["slow_disconnects"] = stats["hub"]["slow_disconnects"]
    return result


def run(quick: bool) -> list[dict[str, Any]]:
    private, star, rate, duration = (1_000, 20, 500.0, 2.0) if quick else (10_000, 100, 2000.0, 5.0)
    label = f"channels, {private:,} private + {star} on * vs {star} on one channel"
    with tmpdir("channels") as directory:
        shared = measure(0, star, rate, duration, directory)
        privates = measure(private, star, rate, duration, directory)
    rows = []
    per_event = {}
    for name, r, fanout in (("one shared channel", shared, star), ("private", privates, star + 1)):
        deliveries = r["private_received"] + r["star_received"]
        expected = r["posted"] * fanout
        p99 = percentile(r["latencies"], 0.99) * 1000 if r["latencies"] else float("nan")
        per_event[name] = r["server_cpu_s"] / max(1, r["posted"]) * 1e6
        note = (
            f"{deliveries:,}/{expected:,} deliveries of {r['posted']:,} events; server CPU "
            f"{r['server_cpu_s']:.1f} s, {per_event[name]:.0f} µs per event, "
            f"{r['server_cpu_s'] / max(1, deliveries) * 1e6:.2f} µs per delivery; "
            f"slow disconnects {r['slow_disconnects']}"
        )
        rows.append(
            row(
                label,
                f"{name}: deliveries/s",
                deliveries / r["elapsed"],
                "deliveries/s",
                "all delivered",
                deliveries == expected,
                note,
            )
        )
        rows.append(row(label, f"{name}: send → receipt p99", p99, "ms"))
    ratio = per_event["private"] / per_event["one shared channel"]
    rows.append(
        row(
            label,
            "CPU per event, private / shared",
            ratio,
            "x",
            f"<= {TARGET_CPU_RATIO:g}x",
            ratio <= TARGET_CPU_RATIO,
        )
    )
    return rows


if __name__ == "__main__":
    for r in run("--quick" in sys.argv):
        print(json.dumps(r))
