"""Client side of the benchmarks: raw-socket SSE subscribers and HTTP posters.

Runs in its own process so the server's CPU is measured apart from the client's.
Plain asyncio protocols on uvloop rather than httpx-sse: a subscriber decodes
the chunked body and counts ``id:`` lines with ``bytes.count`` (a few µs per
received chunk), which keeps the client far from being the bottleneck.

Modes (``python -m bench.sse_client MODE …``, last stdout line is JSON):
    fanout   N subscribers + a flow-controlled producer (POST /events arrays)
    latency  N subscribers; every message's receipt time (monotonic, system-wide)
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

__all__ = ["HttpConnection", "Subscriber", "main"]

ID_MARK = b"\nid: "
REQUEST = (
    b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n\r\n"
)


def _event_number(raw: bytes) -> int:
    """``abcd1234.42`` (sse_batcher) or ``42`` (naive server) -> 42."""
    return int(raw.rsplit(b".", 1)[-1])


class Subscriber(asyncio.Protocol):
    """One SSE stream over a raw socket: decodes chunked transfer, counts messages.

    Args:
        keep_messages: also split the stream into messages and record
            ``(receipt monotonic time, message bytes)`` (low-rate scenarios only).
    """

    def __init__(self, *, keep_messages: bool = False) -> None:
        self.keep_messages = keep_messages
        self.connected = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.status = 0
        self.in_body = False
        self.raw = bytearray()  # undecoded chunked bytes
        self.need = -1  # bytes left in the current chunk (+2 for its CRLF); -1: size line
        self.carry = b""  # tail of the decoded stream (an id line split across reads)
        self.pending = b""  # decoded bytes not yet split into messages (keep_messages)
        self.count = 0  # "id:" lines seen
        self.first_id: int | None = None
        self.last_id: int | None = None
        self.heartbeats = 0
        self.bytes = 0
        self.messages: list[tuple[float, bytes]] = []
        self.on_data: asyncio.Event | None = None

    # -- protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(REQUEST)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(f"closed before the head: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.status = int(head.split(b" ", 2)[1])
            if b"chunked" not in head.lower():
                self.connected.set_exception(ConnectionError(f"not a chunked stream: {head!r}"))
                return
            self.in_body = True
            self.connected.set_result(None)
        self.raw += data
        decoded = self._dechunk()
        if decoded:
            self._consume(decoded, time.monotonic())
            if self.on_data is not None:
                self.on_data.set()

    # -- decoding ---------------------------------------------------------------------

    def _dechunk(self) -> bytes:
        out: list[bytes] = []
        raw = self.raw
        pos = 0
        while True:
            if self.need < 0:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(bytes(raw[pos:eol]).split(b";")[0], 16)
                pos = eol + 2
                if size == 0:
                    self.need = -2  # end of body
                    break
                self.need = size + 2
            if self.need == -2:
                break
            take = min(self.need, len(raw) - pos)
            if take <= 0:
                break
            out.append(bytes(raw[pos : pos + take]))
            pos += take
            self.need -= take
            if self.need == 0:
                self.need = -1
        del raw[:pos]
        if not out:
            return b""
        # Each chunk ends with CRLF; the trailing CRLF bytes are cut below.
        body = b"".join(out)
        return body.replace(b"\r\n", b"\n") if b"\r" in body else body

    def _consume(self, decoded: bytes, now: float) -> None:
        # HTTP chunk trailers (\r\n) became a lone "\n" after the message's "\n\n":
        # harmless for counting and splitting (blank lines between messages).
        data = self.carry + decoded
        self.count += data.count(ID_MARK) - self.carry.count(ID_MARK)
        if self.first_id is None:
            start = data.find(ID_MARK)
            if start >= 0:
                end = data.find(b"\n", start + 5)
                if end > 0:
                    self.first_id = _event_number(data[start + 5 : end])
        last = data.rfind(ID_MARK)
        if last >= 0:
            end = data.find(b"\n", last + 5)
            if end > 0:
                self.last_id = _event_number(data[last + 5 : end])
        self.heartbeats += decoded.count(b"\n:\n") + decoded.startswith(b":\n")
        self.carry = data[-128:]
        if self.keep_messages:
            buffer = self.pending + decoded
            parts = buffer.split(b"\n\n")
            self.pending = parts.pop()
            self.messages.extend((now, part) for part in parts if b"id: " in part)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(
    host: str, port: int, *, keep_messages: bool = False, limit: float = 30.0
) -> Subscriber:
    """Open one stream; return once the response head arrived (status checked)."""
    loop = asyncio.get_running_loop()
    _, sub = await loop.create_connection(
        lambda: Subscriber(keep_messages=keep_messages), host, port
    )
    await asyncio.wait_for(sub.connected, limit)
    if sub.status != 200:
        raise ConnectionError(f"GET /events answered {sub.status}")
    return sub


async def connect_many(
    host: str, port: int, n: int, *, keep_messages: bool = False, parallel: int = 100
) -> list[Subscriber]:
    """Open ``n`` streams, at most ``parallel`` handshakes at once (listen backlog)."""
    gate = asyncio.Semaphore(parallel)

    async def one() -> Subscriber:
        async with gate:
            return await connect(host, port, keep_messages=keep_messages)

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def wait_started(subs: list[Subscriber], marker: int, limit: float = 30.0) -> None:
    """Wait until every stream has sent its first bytes (the server registered it)."""
    deadline = time.monotonic() + limit
    while any(s.bytes <= marker for s in subs):
        if time.monotonic() > deadline:
            raise TimeoutError("streams did not start")
        await asyncio.sleep(0.01)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection for POST requests (raw asyncio streams)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw.split(b" ", 2)[1])
        length = 0
        for line in raw.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        payload = await self.reader.readexactly(length) if length else b""
        return status, payload

    def close(self) -> None:
        self.writer.close()


def _events_body(first: int, n: int, source: str, event_type: str) -> bytes:
    now = time.time()
    return orjson.dumps(
        [
            {
                "type": event_type,
                "source": source,
                "ts": now,
                "data": {"job_id": i, "progress": i % 100, "message": f"frame {i} rendered"},
            }
            for i in range(first, first + n)
        ]
    )


# -- modes ----------------------------------------------------------------------------


async def fanout(args: argparse.Namespace) -> dict[str, Any]:
    """Subscribers plus a producer that keeps at most ``window`` events undelivered."""
    host, port = args.host, args.port
    subs = await connect_many(host, port, args.subscribers)
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
            status, _ = await producer.request(
                "POST", "/events", _events_body(posted, args.batch, args.source, args.type)
            )
            post_status[status] = post_status.get(status, 0) + 1
            if status != 202:
                await asyncio.sleep(0.01)
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
    subs = await connect_many(args.host, args.port, args.subscribers, keep_messages=True)
    await wait_started(subs, 0)
    print("ready", flush=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if all(any(b"event: END" in m for _, m in s.messages[-3:]) for s in subs):
            break
        await asyncio.sleep(0.05)
    receipts: dict[str, list[float]] = {}
    emit_delays: list[float] = []
    for sub in subs:
        for at, message in sub.messages:
            fields = dict(
                line.split(": ", 1) for line in message.decode().split("\n") if ": " in line
            )
            if fields.get("event") == "END" or "id" not in fields:
                continue
            receipts.setdefault(str(_event_number(fields["id"].encode())), []).append(at)
            payload = json.loads(fields["data"])
            data = payload.get("data", payload)
            items = data.get("items", [data])
            emit_delays.extend(at - item["mono"] for item in items if "mono" in item)
    for s in subs:
        s.close()
    return {
        "subscribers": len(subs),
        "finished": sum(1 for s in subs if any(b"event: END" in m for _, m in s.messages)),
        "receipts": receipts,
        "emit_delays": emit_delays,
    }


async def hold(args: argparse.Namespace) -> dict[str, Any]:
    """Open idle streams, print "ready", hold until stdin closes; report heartbeats."""
    subs: list[Subscriber] = []
    errors = 0
    gate = asyncio.Semaphore(args.parallel)

    async def one() -> None:
        nonlocal errors
        async with gate:
            try:
                subs.append(await connect(args.host, args.port))
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
