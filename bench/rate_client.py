"""Load generator for ``bench.workers``: a rate ramp with end-to-end latency probes.

``python -m bench.rate_client --port P --subscribers N --rates R1,R2,… --step S``

Opens N raw-socket SSE subscribers (``bench.sse_client.Subscriber``, which counts
``id:`` lines cheaply) and C keep-alive POST connections, each opened anew so the
server's shared socket hands them to any worker. For each rate R (events/s) it
posts for S seconds on a fixed schedule (open loop: batches of ``--batch`` events,
the first of each carrying ``"probe": k``), then waits for every subscriber to
catch up. A probe's latency is receipt time minus its *scheduled* send time (so a
server that falls behind is charged for the wait, not only for the send), measured
by one monotonic clock in this process. It stops at the first rate where a
subscriber was dropped or did not get every event, or after two rates in a row
with p99 over ``--stop-ms``. Prints one JSON line: per rate,
deliveries/s, p50/p99 latency, completeness, which worker each stream and POST
connection landed on (``X-SSE-Batcher-Worker``), and this process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from typing import Any

import orjson

from bench.sse_client import HttpConnection, Subscriber, wait_started

__all__ = ["main"]

PROBE = b'"probe":'
WORKER = b"x-sse-batcher-worker: "


class ProbeSubscriber(Subscriber):
    """A subscriber that also records when each probe arrived."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.probes: list[tuple[int, float]] = []
        self._tail = b""

    def _consume(self, decoded: bytes, now: float) -> None:
        super()._consume(decoded, now)
        buf = self._tail + decoded
        pos = 0
        while True:
            start = buf.find(PROBE, pos)
            if start < 0:
                break
            begin = start + len(PROBE)
            end = begin
            while end < len(buf) and 48 <= buf[end] <= 57:
                end += 1
            if end == len(buf):  # the number may continue in the next read
                self._tail = buf[start:]
                return
            self.probes.append((int(buf[begin:end]), now))
            pos = end
        self._tail = buf[max(pos, len(buf) - len(PROBE) + 1) :]

    @property
    def worker(self) -> str:
        head = self.head.lower()
        at = head.find(WORKER)
        if at < 0:
            return "-"
        return head[at + len(WORKER) :].split(b"\r\n", 1)[0].split(b"/")[0].decode()


def _body(first: int, n: int, probe: int) -> bytes:
    events = [
        {
            "type": "FRAME_RENDERED",
            "source": "bench-producer",
            "data": {"job_id": i, "progress": i % 100, "message": f"frame {i} rendered"},
        }
        for i in range(first, first + n)
    ]
    events[0]["data"]["probe"] = probe  # type: ignore[index]
    return orjson.dumps(events)


async def _post_worker(conn: HttpConnection) -> str:
    conn.writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    raw = await conn.reader.readuntil(b"\r\n\r\n")
    length = 0
    worker = "-"
    for line in raw.split(b"\r\n"):
        lower = line.lower()
        if lower.startswith(b"content-length:"):
            length = int(line[15:])
        if lower.startswith(WORKER):
            worker = line[len(WORKER) :].split(b"/")[0].decode()
    await conn.reader.readexactly(length)
    return worker


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _step(
    args: argparse.Namespace,
    rate: float,
    subs: list[ProbeSubscriber],
    conns: list[HttpConnection],
    counter: list[int],
) -> dict[str, Any]:
    """Post at ``rate`` for ``args.step`` seconds, wait for the drain, summarise."""
    interval = args.batch * len(conns) / rate  # per connection
    scheduled: dict[int, float] = {}
    counts_before = [s.count for s in subs]
    statuses: dict[int, int] = {}
    cpu_before = _cpu()
    started = time.monotonic()
    stop_at = started + args.step
    posted = 0

    async def produce(k: int, conn: HttpConnection) -> None:
        nonlocal posted
        at = started + interval * k / len(conns)
        while at < stop_at:
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            counter[1] += 1
            probe = counter[1]
            scheduled[probe] = at
            body = _body(counter[0], args.batch, probe)
            counter[0] += args.batch
            status, _ = await conn.request("POST", "/events", body)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 202:
                posted += args.batch
            at += interval

    await asyncio.gather(*(produce(k, c) for k, c in enumerate(conns)))
    sent_seconds = time.monotonic() - started
    deadline = time.monotonic() + args.drain_timeout
    while time.monotonic() < deadline and any(  # noqa: ASYNC110
        s.count - before < posted for s, before in zip(subs, counts_before, strict=True)
    ):
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - started
    latencies = sorted(at - scheduled[k] for s in subs for k, at in s.probes if k in scheduled)
    for s in subs:
        s.probes.clear()
    received = [s.count - before for s, before in zip(subs, counts_before, strict=True)]
    complete = sum(
        1 for s, got in zip(subs, received, strict=True) if got == posted and not s.closed.done()
    )
    return {
        "rate": rate,
        "posted": posted,
        "offered_rate": posted / sent_seconds,
        "deliveries_per_s": sum(received) / sent_seconds,
        "drain_s": elapsed - sent_seconds,
        "complete": complete,
        "subscribers": len(subs),
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else None,
        "statuses": statuses,
        "client_cpu_s": _cpu() - cpu_before,
        "seconds": elapsed,
    }


async def ramp(args: argparse.Namespace) -> dict[str, Any]:
    subs: list[ProbeSubscriber] = []

    async def one() -> ProbeSubscriber:
        loop = asyncio.get_running_loop()
        _, sub = await loop.create_connection(ProbeSubscriber, args.host, args.port)
        await asyncio.wait_for(sub.connected, 30)
        if sub.status != 200:
            raise ConnectionError(f"GET /events answered {sub.status}")
        return sub

    subs = list(await asyncio.gather(*(one() for _ in range(args.subscribers))))
    await wait_started(subs, 0)  # type: ignore[arg-type]
    conns = [await HttpConnection.open(args.host, args.port) for _ in range(args.connections)]
    post_workers = [await _post_worker(c) for c in conns]
    stream_workers: dict[str, int] = {}
    for s in subs:
        stream_workers[s.worker] = stream_workers.get(s.worker, 0) + 1
    steps: list[dict[str, Any]] = []
    counter = [0, 0]  # events posted so far (job ids), probes sent so far
    failed = 0
    for rate in args.rates:
        step = await _step(args, rate, subs, conns, counter)
        steps.append(step)
        print(json.dumps(step), file=sys.stderr, flush=True)
        if step["complete"] < len(subs):
            break  # a subscriber was dropped: the rest would measure fewer streams
        # One slow step on a shared machine is noise; two in a row is the limit.
        failed = failed + 1 if (step["p99_ms"] or 1e9) > args.stop_ms else 0
        if failed == 2:
            break
    for c in conns:
        c.close()
    for s in subs:
        s.close()
    return {"steps": steps, "stream_workers": stream_workers, "post_workers": post_workers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--rates", type=lambda t: [float(x) for x in t.split(",")], required=True)
    parser.add_argument("--step", type=float, default=3.0)
    parser.add_argument("--drain-timeout", type=float, default=5.0)
    parser.add_argument("--stop-ms", type=float, default=400.0)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.install()
    result = asyncio.run(ramp(args))
    os.set_blocking(sys.stdout.fileno(), True)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
