"""Raw-socket HTTP for the load generator: SSE subscribers and a keep-alive poster.

Plain asyncio protocols on uvloop rather than httpx-sse: a subscriber decodes
the chunked body (or, for nchan, a plain one) and counts ``id:`` lines with
``bytes.count`` (a few µs per received chunk), which keeps the client far from
being the bottleneck.
"""

from __future__ import annotations

import asyncio
import re
import time

__all__ = [
    "HttpConnection",
    "Subscriber",
    "connect",
    "connect_many",
    "event_number",
    "is_end",
    "message_fields",
    "request_bytes",
    "wait_started",
]

ID_MARK = b"\nid: "
ANY_ID_MARK = b"\nid:"  # better-sse writes "id:1", without the optional space
REQUEST = (
    b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n\r\n"
)
# The producer's own sequence number, inside every server's message data: the only
# order check that works for nchan, whose ids are its own ("<time>:<tag>").
JOB_ID = re.compile(rb'"job_id":\s*(\d+)')


def event_number(raw: bytes) -> int:
    """``abcd1234.42`` (sse_batcher) or ``42`` (naive server) -> 42."""
    return int(raw.rsplit(b".", 1)[-1])


class Subscriber(asyncio.Protocol):
    """One SSE stream over a raw socket: decodes chunked transfer, counts messages.

    Args:
        keep_messages: also split the stream into messages and record
            ``(receipt monotonic time, message bytes)`` (low-rate scenarios only).
        number: where first/last message numbers come from: ``"id"`` (the SSE id)
            or ``"job_id"`` (the producer's sequence number in the data).
    """

    def __init__(self, *, keep_messages: bool = False, number: str = "id") -> None:
        self.keep_messages = keep_messages
        self.number = number
        self.mark = ID_MARK if number == "id" else ANY_ID_MARK
        self.chunked = True  # nchan streams without chunked transfer encoding
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
            self.chunked = b"chunked" in head.lower()
            if not self.chunked and self.number == "id":
                self.connected.set_exception(ConnectionError(f"not a chunked stream: {head!r}"))
                return
            self.in_body = True
            self.connected.set_result(None)
        if self.chunked:
            self.raw += data
            decoded = self._dechunk()
        else:
            decoded = data
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
        self.count += data.count(self.mark) - self.carry.count(self.mark)
        if self.number == "job_id":
            self._job_ids(data)
        elif self.first_id is None:
            start = data.find(ID_MARK)
            if start >= 0:
                end = data.find(b"\n", start + 5)
                if end > 0:
                    self.first_id = event_number(data[start + 5 : end])
        last = data.rfind(ID_MARK)
        if last >= 0 and self.number == "id":
            end = data.find(b"\n", last + 5)
            if end > 0:
                self.last_id = event_number(data[last + 5 : end])
        self.heartbeats += decoded.count(b"\n:\n") + decoded.startswith(b":\n")
        self.carry = data[-512:] if self.number == "job_id" else data[-128:]
        if self.keep_messages:
            buffer = self.pending + decoded
            parts = buffer.split(b"\n\n")
            self.pending = parts.pop()
            self.messages.extend((now, part) for part in parts if b"id:" in part)

    def _job_ids(self, data: bytes) -> None:
        # The data's last complete message ends at its "\n\n"; a job_id after it may
        # still be cut short by the read, so only whole messages count.
        whole = data[: data.rfind(b"\n\n") + 1]
        if self.first_id is None:
            first = JOB_ID.search(whole)
            if first is not None:
                self.first_id = int(first.group(1))
        last = whole.rfind(b'"job_id":')
        if last >= 0:
            match = JOB_ID.match(whole, last)
            if match is not None:
                self.last_id = int(match.group(1))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(
    host: str, port: int, *, keep_messages: bool = False, limit: float = 30.0, number: str = "id"
) -> Subscriber:
    """Open one stream; return once the response head arrived (status checked)."""
    loop = asyncio.get_running_loop()
    _, sub = await loop.create_connection(
        lambda: Subscriber(keep_messages=keep_messages, number=number), host, port
    )
    await asyncio.wait_for(sub.connected, limit)
    if sub.status != 200:
        raise ConnectionError(f"GET /events answered {sub.status}")
    return sub


async def connect_many(
    host: str,
    port: int,
    n: int,
    *,
    keep_messages: bool = False,
    parallel: int = 100,
    number: str = "id",
) -> list[Subscriber]:
    """Open ``n`` streams, at most ``parallel`` handshakes at once (listen backlog)."""
    gate = asyncio.Semaphore(parallel)

    async def one() -> Subscriber:
        async with gate:
            return await connect(host, port, keep_messages=keep_messages, number=number)

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
        self.writer.write(request_bytes(method, path, body))
        return await self.read_response()

    async def pipeline(self, path: str, bodies: list[bytes], event_type: str) -> list[int]:
        """POST each body as its own request, all in one write (HTTP/1.1 pipelining);
        the statuses in order. ``X-EventSource-Event`` names the SSE event for nchan."""
        extra = f"X-EventSource-Event: {event_type}\r\n"
        self.writer.write(b"".join(request_bytes("POST", path, b, extra) for b in bodies))
        return [(await self.read_response())[0] for _ in bodies]

    async def read_response(self) -> tuple[int, bytes]:
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


def request_bytes(method: str, path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def is_end(message: bytes) -> bool:
    return b"event: END\n" in message or b"event:END\n" in message


def message_fields(message: bytes) -> dict[str, str]:
    """One message's fields; the space after the colon is optional (the SSE spec)."""
    fields = {}
    for line in message.decode().split("\n"):
        name, colon, value = line.partition(":")
        if colon and name:
            fields[name] = value[1:] if value.startswith(" ") else value
    return fields
