"""Client side of the channels benchmark (``python -m bench.channels_client``).

Opens ``--private`` streams, one per channel ``user.<n>``, plus ``--star`` streams
on ``--star-channel`` (``*`` or one shared channel), then POSTs ``--rate`` events/s
for ``--duration`` seconds on one keep-alive connection, each on a random private
channel (or on the shared channel when ``--private 0``), with the send time
(monotonic) in its data. Prints one JSON line: messages received per kind, the
events posted, and send → receipt latencies (measured on every private message,
and on the first star stream's messages).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import sys
import time
from typing import Any

import orjson

__all__ = ["main"]

_MONO = re.compile(rb'"mono":([0-9.]+)')
_ID = b"\nid: "


class Stream(asyncio.Protocol):
    """One SSE stream over a raw socket; counts ``id:`` lines, optionally timing them."""

    def __init__(self, path: str, *, timed: bool) -> None:
        self.request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        self.timed = timed
        self.started = asyncio.get_running_loop().create_future()
        self.count = 0
        self.latencies: list[float] = []
        self.carry = b""
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.started.done():
            if not self.status:
                self.status = int(data.split(b" ", 2)[1])
            if b"retry:" in data or self.status != 200:
                self.started.set_result(None)
        text = self.carry + data
        # Chunk framing never splits "\nid: " in practice (a message is one write),
        # but the carry keeps a count right if it ever did.
        self.count += text.count(_ID) - self.carry.count(_ID)
        self.carry = text[-8:]
        if self.timed:
            now = time.monotonic()
            self.latencies.extend(now - float(m) for m in _MONO.findall(data))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.started.done():
            self.started.set_exception(ConnectionError(str(exc)))


async def _open(host: str, port: int, path: str, timed: bool, gate: asyncio.Semaphore) -> Stream:
    async with gate:
        loop = asyncio.get_running_loop()
        _, stream = await loop.create_connection(lambda: Stream(path, timed=timed), host, port)
        await asyncio.wait_for(stream.started, 30)
        if stream.status != 200:
            raise ConnectionError(f"{path} answered {stream.status}")
        return stream


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes, host: str
) -> int:
    writer.write(
        b"POST /events HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (host.encode(), len(body)) + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    gate = asyncio.Semaphore(100)
    privates = await asyncio.gather(
        *(
            _open(args.host, args.port, f"/events?channel=user.{n}", True, gate)
            for n in range(args.private)
        )
    )
    stars = await asyncio.gather(
        *(
            _open(args.host, args.port, f"/events?channel={args.star_channel}", k == 0, gate)
            for k in range(args.star)
        )
    )
    reader, writer = await asyncio.open_connection(args.host, args.port)
    # The parent reads the server's CPU between "ready" and "posted": connecting
    # 10,000 streams is not what this measures.
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    rng = random.Random(7)
    tick = 0.05
    per_tick = max(1, round(args.rate * tick))
    posted = 0
    statuses: dict[int, int] = {}
    started = time.monotonic()
    next_at = started
    while time.monotonic() - started < args.duration:
        now = time.monotonic()
        events = [
            {
                "type": "JOB_PROGRESS",
                "source": args.source,
                "channel": f"user.{rng.randrange(args.private)}" if args.private else "shared",
                "data": {"mono": now, "pct": i % 100},
            }
            for i in range(per_tick)
        ]
        status = await _post(reader, writer, orjson.dumps(events), args.host)
        statuses[status] = statuses.get(status, 0) + 1
        posted += per_tick
        next_at += tick
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    elapsed = time.monotonic() - started
    print("posted", flush=True)
    expected_star = posted * args.star
    deadline = time.monotonic() + args.drain_timeout
    while time.monotonic() < deadline:
        if sum(s.count for s in stars) >= expected_star and (
            sum(p.count for p in privates) >= posted or not args.private
        ):
            break
        await asyncio.sleep(0.05)
    latencies = [x for s in (*privates, *stars) if s.timed for x in s.latencies]
    writer.close()
    for s in (*privates, *stars):
        s.transport.close()  # type: ignore[attr-defined]
    return {
        "posted": posted,
        "elapsed": elapsed,
        "post_status": statuses,
        "private_received": sum(p.count for p in privates),
        "star_received": sum(s.count for s in stars),
        "latencies": sorted(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--private", type=int, default=10_000)
    parser.add_argument("--star", type=int, default=100)
    parser.add_argument("--star-channel", default="*")
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--source", default="bench-producer")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
