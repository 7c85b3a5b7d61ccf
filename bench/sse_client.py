"""Client side of the benchmarks: the load generator's modes.

Runs in its own process so the server's CPU is measured apart from the client's;
the subscribers and the HTTP connection are ``bench.raw_client``'s.

Modes (``python -m bench.sse_client MODE …``, last stdout line is JSON):
    fanout   N subscribers + a flow-controlled producer (POST /events arrays, or
             with ``--publish single`` one event per request, pipelined: nchan)
    latency  N subscribers; every message's receipt time (monotonic, system-wide);
             with ``--publish-rate`` this process also POSTs the events (the peers)
    hold     N idle subscribers; prints "ready", holds until stdin closes
    post     C keep-alive connections POSTing one event per request
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from typing import Any

import orjson

from .raw_client import (
    HttpConnection,
    Subscriber,
    connect,
    connect_many,
    event_number,
    is_end,
    message_fields,
    request_bytes,
    wait_started,
)

__all__ = ["HttpConnection", "Subscriber", "main"]


def _event(i: int, source: str, event_type: str, now: float) -> dict[str, Any]:
    return {
        "type": event_type,
        "source": source,
        "ts": now,
        "data": {"job_id": i, "progress": i % 100, "message": f"frame {i} rendered"},
    }


def _events_body(first: int, n: int, source: str, event_type: str) -> bytes:
    now = time.time()
    return orjson.dumps([_event(i, source, event_type, now) for i in range(first, first + n)])


async def _publish(
    producer: HttpConnection, first: int, args: argparse.Namespace
) -> dict[int, int]:
    """Post ``args.batch`` events: one array, or (``--publish single``) one request each."""
    if args.publish == "batch":
        body = _events_body(first, args.batch, args.source, args.type)
        status, _ = await producer.request("POST", "/events", body)
        return {status: 1}
    now = time.time()
    bodies = [
        orjson.dumps(_event(i, args.source, args.type, now))
        for i in range(first, first + args.batch)
    ]
    statuses: dict[int, int] = {}
    for status in await producer.pipeline("/events", bodies, args.type):
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


# -- modes ----------------------------------------------------------------------------


async def fanout(args: argparse.Namespace) -> dict[str, Any]:
    """Subscribers plus a producer that keeps at most ``window`` events undelivered."""
    host, port = args.host, args.port
    subs = await connect_many(host, port, args.subscribers, number=args.number)
    await wait_started(subs, 0)
    producer = await HttpConnection.open(host, port)
    posted = 0
    post_status: dict[int, int] = {}
    stop = asyncio.Event()

    def received() -> list[int]:
        return [s.count for s in subs]

    async def produce() -> None:
        nonlocal posted
        while not stop.is_set():
            if posted - min(received()) + args.batch > args.window:
                await asyncio.sleep(0.0005)
                continue
            statuses = await _publish(producer, posted, args)
            for status, n in statuses.items():
                post_status[status] = post_status.get(status, 0) + n
            if any(status // 100 != 2 for status in statuses):
                await asyncio.sleep(0.01)
                if args.publish == "single":
                    break  # some of the pipelined events were refused: order is lost
                continue
            posted += args.batch

    task = asyncio.ensure_future(produce())
    await asyncio.sleep(args.warmup)
    start_count, started = sum(received()), time.monotonic()
    await asyncio.sleep(args.duration)
    end_count, ended = sum(received()), time.monotonic()
    stop.set()
    await task
    deadline = time.monotonic() + args.drain_timeout
    while time.monotonic() < deadline and min(received()) < posted:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    complete = sum(
        1
        for s in subs
        if s.count == posted
        and s.first_id is not None
        and s.last_id is not None
        and s.last_id - s.first_id + 1 == posted
        and not s.closed.done()
    )
    producer.close()
    for s in subs:
        s.close()
    return {
        "deliveries": end_count - start_count,
        "seconds": ended - started,
        "rate": (end_count - start_count) / (ended - started),
        "posted": posted,
        "subscribers": len(subs),
        "complete": complete,
        "disconnected": sum(1 for s in subs if s.closed.done()),
        "post_status": post_status,
        "client_cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime
        + resource.getrusage(resource.RUSAGE_SELF).ru_stime,
    }


async def latency(args: argparse.Namespace) -> dict[str, Any]:
    """Subscribers recording every message's receipt time until the server says END."""
    subs = await connect_many(
        args.host, args.port, args.subscribers, keep_messages=True, number=args.number
    )
    await wait_started(subs, 0)
    print("ready", flush=True)
    publisher = None
    if args.publish_rate > 0:
        publisher = asyncio.ensure_future(_publish_steadily(args))
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if all(any(is_end(m) for _, m in s.messages[-3:]) for s in subs):
            break
        await asyncio.sleep(0.05)
    receipts: dict[str, list[float]] = {}
    emit_delays: list[float] = []
    for sub in subs:
        for at, message in sub.messages:
            fields = message_fields(message)
            if fields.get("event") == "END" or "id" not in fields:
                continue
            if args.number == "id":
                receipts.setdefault(str(event_number(fields["id"].encode())), []).append(at)
            payload = json.loads(fields["data"])
            data = payload.get("data", payload)
            items = [i["data"] for i in data["items"]] if "items" in data else [data]
            emit_delays.extend(at - item["mono"] for item in items if "mono" in item)
    for s in subs:
        s.close()
    published = await publisher if publisher is not None else 0
    return {
        "subscribers": len(subs),
        "finished": sum(1 for s in subs if any(is_end(m) for _, m in s.messages)),
        "receipts": receipts,
        "emit_delays": emit_delays,
        "published": published,
    }


async def _subscribers_seen(conn: HttpConnection, args: argparse.Namespace) -> int:
    """The server's own subscriber count (``--count-path``, dotted ``--count-key``)."""
    conn.writer.write(request_bytes("GET", args.count_path, b"", "Accept: text/json\r\n"))
    _, body = await conn.read_response()
    value: Any = json.loads(body)
    for key in args.count_key.split("."):
        value = value[key]
    return int(value)


async def _publish_steadily(args: argparse.Namespace) -> int:
    """POST one event per request at ``--publish-rate`` for ``--duration`` seconds once
    the server counts every subscriber, then END; each event's data carries its send
    time (``mono``). Returns the number of events published (END not counted)."""
    conn = await HttpConnection.open(args.host, args.port)
    try:
        deadline = time.monotonic() + 60
        while await _subscribers_seen(conn, args) < args.subscribers:
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not count every subscriber")
            await asyncio.sleep(0.01)  # polling the server's count, with a deadline
        interval = 1.0 / args.publish_rate
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < args.duration:
            await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
            data = {"job_id": n, "progress": n % 100, "mono": time.monotonic()}
            event = {"type": "JOB_PROGRESS", "source": args.source, "data": data}
            statuses = await conn.pipeline("/events", [orjson.dumps(event)], "JOB_PROGRESS")
            if statuses[0] // 100 != 2:
                raise RuntimeError(f"POST /events answered {statuses[0]}")
            n += 1
        end = {"type": "END", "source": args.source, "data": {}}
        await conn.pipeline("/events", [orjson.dumps(end)], "END")
        return n
    finally:
        conn.close()


async def hold(args: argparse.Namespace) -> dict[str, Any]:
    """Open idle streams, print "ready", hold until stdin closes; report heartbeats."""
    subs: list[Subscriber] = []
    errors = 0
    gate = asyncio.Semaphore(args.parallel)

    async def one() -> None:
        nonlocal errors
        async with gate:
            try:
                subs.append(await connect(args.host, args.port, number=args.number))
            except (OSError, TimeoutError):
                errors += 1

    await asyncio.gather(*(one() for _ in range(args.subscribers)))
    with contextlib.suppress(TimeoutError):
        await wait_started(subs, 0, limit=20.0)
    print(f"ready {len(subs)} {errors}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    alive = sum(1 for s in subs if not s.closed.done())
    beats = [s.heartbeats for s in subs]
    for s in subs:
        s.close()
    return {
        "connected": len(subs),
        "errors": errors,
        "alive": alive,
        "with_heartbeat": sum(1 for b in beats if b > 0),
    }


async def post(args: argparse.Namespace) -> dict[str, Any]:
    """``concurrency`` connections each POSTing one event per request for ``duration``."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.monotonic() + args.duration

    async def client(k: int) -> None:
        conn = await HttpConnection.open(args.host, args.port)
        n = 0
        try:
            while time.monotonic() < stop_at:
                body = orjson.dumps(
                    {
                        "type": "JOB_STARTED",
                        "source": f"worker-{k}",
                        "data": {"job_id": k * 1_000_000 + n},
                    }
                )
                sent = time.perf_counter()
                status, _ = await conn.request("POST", "/events", body)
                done = time.perf_counter()
                if done <= stop_at + 60:  # count what completed; late answers too
                    latencies.append(done - sent)
                statuses[status] = statuses.get(status, 0) + 1
                n += 1
        finally:
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(client(k) for k in range(args.concurrency)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rate": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else None,
        "max_ms": latencies[-1] * 1000 if latencies else None,
        "statuses": statuses,
    }


MODES = {"fanout": fanout, "latency": latency, "hold": hold, "post": post}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--source", default="bench-producer")
    parser.add_argument("--type", default="FRAME_RENDERED")
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=100)
    parser.add_argument("--number", choices=("id", "job_id"), default="id")
    parser.add_argument("--publish", choices=("batch", "single"), default="batch")
    parser.add_argument("--publish-rate", type=float, default=0.0)
    parser.add_argument("--count-path", default="/stats")
    parser.add_argument("--count-key", default="hub.subscribers")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # plain asyncio is fine, only slower
        pass
    result = asyncio.run(MODES[args.mode](args))
    os.set_blocking(sys.stdout.fileno(), True)  # the loop may have left it non-blocking
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
