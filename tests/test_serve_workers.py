"""``sse-batcher serve --workers 2`` on one SQLite file, over real loopback HTTP.

Publishers post to the port (each request on a new connection, so they land on
either worker); subscribers sit on both workers (``X-SSE-Batcher-Worker`` says
which). Every subscriber must get every event exactly once, in id order, resume
on the other worker, and survive a ``kill -9`` of one worker.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from tests.servers import ServerProcess
from tests.test_redis_journal import prefix

__all__ = ["prefix"]  # a fixture, imported to be used here

pytestmark = pytest.mark.anyio

HEADER = "x-sse-batcher-worker"
# A new connection per request: the shared socket hands each one to either worker.
NEW_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)


def worker_of(response: httpx.Response) -> tuple[int, int]:
    slot, pid = response.headers[HEADER].split("/")
    return int(slot), int(pid)


async def wait_until(condition: Callable[[], bool], within: float = 20.0) -> None:
    with anyio.fail_after(within):
        # Polling with a deadline: the state lives in other processes.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


def steps_of(envelope: dict[str, Any]) -> list[int]:
    data = envelope["data"]
    if "items" in data:
        return [item["data"]["n"] for item in data["items"]]
    return [data["n"]]


@dataclass
class Subscriber:
    """An EventSource-like client: reads /events, reconnects with its last id."""

    url: str
    ids: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    workers: list[tuple[int, int]] = field(default_factory=list)  # one per connection
    last_id: str | None = None
    connected: anyio.Event = field(default_factory=anyio.Event)
    reconnect: bool = False

    async def run(self) -> None:
        timeout = httpx.Timeout(10.0, read=None)
        async with httpx.AsyncClient(timeout=timeout, limits=NEW_CONNECTIONS) as client:
            while True:
                headers = {} if self.last_id is None else {"Last-Event-ID": self.last_id}
                try:
                    async with aconnect_sse(
                        client, "GET", f"{self.url}/events", headers=headers
                    ) as source:
                        assert source.response.status_code == 200
                        self.workers.append(worker_of(source.response))
                        async for sse in source.aiter_sse():
                            if sse.retry is not None:
                                self.connected.set()
                            if not sse.data:
                                continue
                            assert sse.event != "reset", sse.data
                            envelope = orjson.loads(sse.data)
                            self.ids.append(sse.id)
                            self.steps.extend(steps_of(envelope))
                            self.last_id = sse.id
                except httpx.TransportError:
                    if not self.reconnect:
                        raise
                if not self.reconnect:
                    return
                await anyio.sleep(0.05)  # EventSource's retry delay


async def subscribers_on_both(
    tg: anyio.abc.TaskGroup, url: str, *, each: int = 2, reconnect: bool = False
) -> list[Subscriber]:
    """Open streams until each worker slot holds ``each`` of them."""
    subscribers: list[Subscriber] = []
    per_slot: dict[int, int] = {0: 0, 1: 0}
    for _ in range(60):
        if min(per_slot.values()) >= each:
            return subscribers
        subscriber = Subscriber(url, reconnect=reconnect)
        tg.start_soon(subscriber.run)
        with anyio.fail_after(10):
            await subscriber.connected.wait()
        slot = subscriber.workers[0][0]
        per_slot[slot] += 1
        subscribers.append(subscriber)
    raise AssertionError(f"streams did not reach both workers: {per_slot}")


@dataclass
class Publisher:
    url: str
    acknowledged: list[int] = field(default_factory=list)
    slots: set[int] = field(default_factory=set)
    failed: list[int] = field(default_factory=list)

    async def post(self, client: httpx.AsyncClient, steps: range) -> None:
        body = [{"type": "STEP", "source": "worker", "data": {"n": n}} for n in steps]
        try:
            response = await client.post(f"{self.url}/events", json=body)
        except httpx.TransportError:  # the worker that took the connection died
            self.failed.extend(steps)
            return
        assert response.status_code == 202, response.text
        self.slots.add(worker_of(response)[0])
        self.acknowledged.extend(steps)

    async def run(self, steps: range) -> None:
        async with httpx.AsyncClient(timeout=10, limits=NEW_CONNECTIONS) as client:
            for start in range(steps.start, steps.stop, 3):
                await self.post(client, range(start, min(start + 3, steps.stop)))


async def history_ids(url: str, after: str | None = None) -> list[str]:
    """Every stored id after ``after``, in journal order."""
    ids: list[str] = []
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            params = {"limit": "1000"} if after is None else {"limit": "1000", "after": after}
            page = (await client.get(f"{url}/events/history", params=params)).json()
            assert page["reset"] is None
            ids.extend(event["id"] for event in page["events"])
            if not page["more"]:
                return ids
            after = ids[-1]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    args = [
        "--workers",
        "2",
        "--db",
        str(tmp_path / "events.db"),
        "--window-ms",
        "20",
        "--durable-ingest",
    ]
    async with ServerProcess(args) as process:
        yield process
        output = await anyio.to_thread.run_sync(process.stop)
        assert process.returncode == 0, output
        assert "Traceback" not in output, output


def assert_complete(subscriber: Subscriber, journal: list[str]) -> None:
    assert subscriber.ids == journal  # every stored event, once each, in journal order
    assert len(subscriber.steps) == len(set(subscriber.steps)), "a step delivered twice"


async def every_subscriber_gets_every_event_once_in_order(url: str) -> None:
    async with anyio.create_task_group() as tg:
        subscribers = await subscribers_on_both(tg, url)
        publishers = [Publisher(url) for _ in range(3)]
        async with anyio.create_task_group() as posting:
            for i, publisher in enumerate(publishers):
                posting.start_soon(publisher.run, range(i * 300, (i + 1) * 300))
        assert set().union(*(p.slots for p in publishers)) == {0, 1}  # posts hit both
        for subscriber in subscribers:
            await wait_until(lambda s=subscriber: len(s.steps) >= 900)  # type: ignore[misc]
        journal = await history_ids(url)
        tg.cancel_scope.cancel()
    for subscriber in subscribers:
        assert_complete(subscriber, journal)
        assert sorted(subscriber.steps) == list(range(900))


async def test_every_subscriber_on_either_worker_gets_every_event_once_in_id_order(
    server: ServerProcess,
) -> None:
    await every_subscriber_gets_every_event_once_in_order(server.url)


@pytest.mark.redis
async def test_with_redis_each_worker_is_a_node(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    args = ["--workers", "2", "--redis-url", redis_url, "--redis-prefix", prefix]
    args += ["--dead-letter", str(tmp_path / "dead.jsonl"), "--window-ms", "20"]
    async with ServerProcess([*args, "--durable-ingest"]) as server:
        await every_subscriber_gets_every_event_once_in_order(server.url)
        output = await anyio.to_thread.run_sync(server.stop)
    assert server.returncode == 0 and "Traceback" not in output, output


async def test_a_subscriber_resumes_on_the_other_worker(server: ServerProcess) -> None:
    async with anyio.create_task_group() as tg:
        first = (await subscribers_on_both(tg, server.url, each=1))[0]
        await Publisher(server.url).run(range(30))
        await wait_until(lambda: len(first.steps) >= 30)
        tg.cancel_scope.cancel()
    cursor, seen_on = first.last_id, first.workers[0][0]
    await Publisher(server.url).run(range(30, 60))  # while it is away
    async with anyio.create_task_group() as tg:
        for _ in range(60):  # connect until the other worker takes the connection
            again = Subscriber(server.url, last_id=cursor)
            tg.start_soon(again.run)
            await wait_until(lambda a=again: bool(a.workers))  # type: ignore[misc]
            if again.workers[0][0] != seen_on:
                break
        assert again.workers[0][0] != seen_on
        await wait_until(lambda: len(again.steps) >= 30)
        await Publisher(server.url).run(range(60, 75))  # and live after the replay
        await wait_until(lambda: len(again.steps) >= 45)
        assert cursor is not None
        journal = await history_ids(server.url, cursor)
        tg.cancel_scope.cancel()
    assert sorted(first.steps + again.steps) == list(range(75))
    assert again.ids == journal


async def test_kill_9_of_one_worker_loses_nothing_acknowledged(server: ServerProcess) -> None:
    async with anyio.create_task_group() as tg:
        subscribers = await subscribers_on_both(tg, server.url, each=1, reconnect=True)
        victim = next(s.workers[0] for s in subscribers if s.workers[0][0] == 1)
        publisher = Publisher(server.url)
        await publisher.run(range(150))
        os.kill(victim[1], signal.SIGKILL)
        await publisher.run(range(150, 450))  # the survivor (then both) keep serving

        restarted: set[tuple[int, int]] = set()
        async with httpx.AsyncClient(timeout=5, limits=NEW_CONNECTIONS) as client:
            with anyio.fail_after(30):
                while not any(slot == 1 and pid != victim[1] for slot, pid in restarted):
                    try:
                        restarted.add(worker_of(await client.get(f"{server.url}/health")))
                    except httpx.TransportError:
                        pass
        await publisher.run(range(450, 600))
        acknowledged = set(publisher.acknowledged)
        assert len(acknowledged) >= 450  # the failures are the few requests the victim held
        for subscriber in subscribers:
            await wait_until(lambda s=subscriber: acknowledged <= set(s.steps))  # type: ignore[misc]
        journal = await history_ids(server.url)
        tg.cancel_scope.cancel()
    for subscriber in subscribers:
        assert_complete(subscriber, journal)
    moved = next(s for s in subscribers if s.workers[0] == victim)
    assert len(moved.workers) >= 2  # it reconnected after the kill, and lost nothing


def test_a_slot_is_held_until_its_process_lets_go(tmp_path: Path) -> None:
    from sse_batcher.cli._workers import claim_slot, slot_path

    dead_letter = str(tmp_path / "events.db.dead-letter.jsonl")
    first, second = claim_slot(dead_letter), claim_slot(dead_letter)
    assert (first.index, second.index) == (0, 1)  # flock: one holder per slot
    os.close(first.lock_fd)  # what the kernel does when a worker dies
    again = claim_slot(dead_letter)
    assert again.index == 0
    os.close(again.lock_fd)
    os.close(second.lock_fd)
    assert slot_path(dead_letter, 1) == str(tmp_path / "events.db.dead-letter.w1.jsonl")


def test_workers_must_be_a_small_positive_number(tmp_path: Path) -> None:
    import subprocess
    import sys

    for bad in ("0", "65", "two"):
        completed = subprocess.run(
            [sys.executable, "-m", "sse_batcher", "serve", "--workers", bad],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        assert completed.returncode == 2
        assert "--workers" in completed.stderr
