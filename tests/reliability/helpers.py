"""Shared tools of the reliability suite: journal reading, polling, RSS, raw SSE clients."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import orjson

from tests.waiting import wait_until, wait_until_sync

from ..sse_parser import SSEMessage, SSEParser

__all__ = [
    "RawSSEClient",
    "members",
    "poll",
    "poll_sync",
    "rss_kib",
    "stored_rows",
    "stored_values",
    "tcp_state",
]


def members(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The member datas a stored event carries: a batch's ``items``, else itself."""
    items = data.get("items")
    if isinstance(items, list) and "batch_count" in data:
        return [item["data"] for item in items]
    return [data]


def stored_rows(db: Path | str) -> list[tuple[int, str, dict[str, Any]]]:
    """Every row of a SQLite journal file as (id, type, data), read directly (read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT id, type, CAST(data AS BLOB) FROM events ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [(int(i), str(t), orjson.loads(d)) for i, t, d in rows]


def stored_values(db: Path | str, key: str = "seq") -> list[Any]:
    """``data[key]`` of every member stored, in journal order (batches unpacked)."""
    return [m[key] for _, _, data in stored_rows(db) for m in members(data) if key in m]


async def poll(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    within: float,
    what: str,
    interval: float = 0.02,
) -> None:
    """Await ``condition()`` becoming true, checking every ``interval``; fail after ``within`` s."""
    await wait_until(condition, within, what=what, interval=interval)


def poll_sync(condition: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until_sync(condition, timeout, what=what, interval=0.02)


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def tcp_state(local_port: int, remote_port: int) -> str | None:
    """State of the IPv4 TCP socket bound to local_port and connected to remote_port."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, remote, state = parts[1], parts[2], parts[3]
        if (
            int(local.split(":")[1], 16) == local_port
            and int(remote.split(":")[1], 16) == remote_port
        ):
            return _TCP_STATES.get(state, state)
    return None


@contextmanager
def sqlite_lock(db: Path | str) -> Iterator[sqlite3.Connection]:
    """Hold ``BEGIN EXCLUSIVE`` on the database from another connection (another writer)."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield conn
        conn.execute("ROLLBACK")
    finally:
        conn.close()


class RawSSEClient:
    """An SSE client on a plain asyncio socket, parsed with the spec-faithful parser.

    Args:
        url: the server's base URL.
        path: the request path and query.
        headers: extra request headers.
        rcvbuf: SO_RCVBUF to set before connecting (small = a slow network).
    """

    def __init__(
        self,
        url: str,
        path: str = "/events",
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = path
        self.headers = headers or {}
        self.rcvbuf = rcvbuf
        self.parser = SSEParser()
        self.messages: list[SSEMessage] = []
        self.status = 0
        self.local_port = 0
        self.raw = bytearray()
        self.eof = False
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
        self.local_port = sock.getsockname()[1]
        limit = 2**16 if self.rcvbuf is None else max(self.rcvbuf, 1024)
        self._reader, self._writer = await asyncio.open_connection(sock=sock, limit=limit)
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Accept: text/event-stream",
        ]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self._writer.drain()

    async def read_head(self) -> int:
        """Read the status line and headers; return the status code."""
        assert self._reader is not None
        head = await self._reader.readuntil(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.chunked = b"transfer-encoding: chunked" in head.lower()
        return self.status

    async def read_some(self) -> list[SSEMessage]:
        """Read what is available (at least one byte); parse the de-chunked body."""
        assert self._reader is not None
        data = await self._reader.read(65536)
        if not data:
            self.eof = True
            return self.parser.close()
        self.raw += data
        return self._parse_available()

    def _parse_available(self) -> list[SSEMessage]:
        out: list[SSEMessage] = []
        if not self.chunked:
            out = self.parser.feed(bytes(self.raw))
            self.raw.clear()
        else:
            while True:
                end = self.raw.find(b"\r\n")
                if end < 0:
                    break
                size = int(self.raw[:end].split(b";")[0], 16)
                if len(self.raw) < end + 2 + size + 2:
                    break
                body = bytes(self.raw[end + 2 : end + 2 + size])
                del self.raw[: end + 2 + size + 2]
                if size == 0:
                    self.eof = True
                    out += self.parser.close()
                    break
                out += self.parser.feed(body)
        self.messages += out
        return out

    async def read_until(self, condition: Callable[[RawSSEClient], bool], within: float) -> None:
        with anyio.fail_after(within):
            while not condition(self) and not self.eof:
                await self.read_some()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
            self._writer = None


def env_seconds(name: str, default: float) -> float:
    return float(os.environ.get(name, default))
