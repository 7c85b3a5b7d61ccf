"""Steady HTTP load for the crash, stop and soak tests: publishers posting uid-tagged events."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import orjson

from .helpers import RawSSEClient, members

__all__ = ["Load", "Subscriber"]

TYPES = ("JOB_STARTED", "JOB_PROGRESS", "JOB_COMPLETED", "THUMBNAIL_GENERATED")


@dataclass
class Load:
    """``publishers`` tasks each POSTing ``per_post`` events at a time until stopped.

    Every event's data carries a unique ``seq``; ``accepted`` maps each seq whose POST
    answered 202 to the monotonic time the answer arrived.
    """

    url: str
    publishers: int = 4
    per_post: int = 5
    pause: float = 0.005
    run: str = "r"
    accepted: dict[str, float] = field(default_factory=dict)
    sent: set[str] = field(default_factory=set)  # posted, answer 202 or not (maybe stored)
    refused: int = 0  # 503 answers (queue full / shutting down)
    errors: int = 0  # connection failures (server gone)
    statuses: dict[int, int] = field(default_factory=dict)
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def batch(self, publisher: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(self.per_post):
            n = next(self._counter)
            seq = f"{self.run}-{n}"
            out.append(
                {
                    "type": TYPES[n % len(TYPES)],
                    "source": f"pub{publisher}",
                    "data": {"seq": seq, "job_id": n, "pad": "x" * (n % 50)},
                    "uid": seq,
                }
            )
        return out

    async def publisher(self, index: int, stop: anyio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            while not stop.is_set():
                events = self.batch(index)
                seqs = [e["uid"] for e in events]
                self.sent.update(seqs)
                try:
                    response = await client.post(
                        "/events",
                        content=orjson.dumps(events),
                        headers={"content-type": "application/json"},
                    )
                except httpx.TransportError:
                    self.errors += 1
                    if stop.is_set():
                        return
                    await anyio.sleep(0.05)
                    continue
                self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
                if response.status_code == 202:
                    body = response.json()
                    assert body["rejected"] == [], body
                    now = time.monotonic()
                    for seq in seqs:
                        self.accepted[seq] = now
                elif response.status_code == 503:
                    self.refused += 1
                    await anyio.sleep(0.05)
                else:
                    raise AssertionError(f"unexpected {response.status_code}: {response.text}")
                await anyio.sleep(self.pause)

    async def run_until(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            for i in range(self.publishers):
                tg.start_soon(self.publisher, i, stop)


class Subscriber:
    """A live SSE subscriber that records (id, member seqs) of everything it receives."""

    def __init__(self, url: str, last_event_id: str | None = None) -> None:
        headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
        self.client = RawSSEClient(url, headers=headers)
        self.ids: list[str] = []
        self.seqs: list[str] = []
        self.resets: list[dict[str, Any]] = []

    async def start(self) -> None:
        await self.client.connect()
        assert await self.client.read_head() == 200
        # The first message is the retry line: once it arrives the hub has registered us.
        await self.client.read_until(lambda c: c.parser.retry is not None, 10)
        self._take()

    def _take(self) -> None:
        for message in self.client.messages[len(self.ids) + len(self.resets) :]:
            if message.type == "reset":
                self.resets.append(orjson.loads(message.data))
                continue
            envelope = orjson.loads(message.data)
            assert envelope["id"] == message.last_event_id
            self.ids.append(message.last_event_id)
            self.seqs.extend(m["seq"] for m in members(envelope["data"]) if "seq" in m)

    async def follow(self) -> None:
        """Read until the server closes the stream (or the task is cancelled)."""
        try:
            while not self.client.eof:
                await self.client.read_some()
                self._take()
        except (ConnectionError, OSError):
            pass

    async def read_until_id(self, last_id: str, within: float) -> None:
        with anyio.fail_after(within):
            while last_id not in self.ids:
                if self.client.eof:
                    raise AssertionError(f"stream ended before {last_id}")
                await self.client.read_some()
                self._take()

    def close(self) -> None:
        self.client.close()
