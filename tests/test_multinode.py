"""Two ``sse-batcher serve`` processes sharing one Redis: a worker posts to node A, a
client on node B receives everything in order, then moves to node A with its
Last-Event-ID and gets exactly the events after it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from tests.servers import ServerProcess
from tests.test_redis_journal import PrivateRedis, prefix, private_redis, wait_until

__all__ = ["prefix", "private_redis"]  # fixtures, imported to be used here

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def steps_of(envelope: dict[str, Any]) -> list[int]:
    """The ``n`` of every emitted event a message carries (a batch carries several)."""
    data = envelope["data"]
    if "items" in data:
        return [item["data"]["n"] for item in data["items"]]
    return [data["n"]]


@dataclass
class Message:
    id: str
    type: str
    envelope: dict[str, Any]

    @property
    def steps(self) -> list[int]:
        return steps_of(self.envelope)


@dataclass
class Stream:
    """An SSE client reading one node's /events in the background."""

    messages: list[Message] = field(default_factory=list)
    connected: anyio.Event = field(default_factory=anyio.Event)

    @property
    def steps(self) -> list[int]:
        return [n for m in self.messages for n in m.steps]

    async def read(self, url: str, last_event_id: str | None = None) -> None:
        headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
        timeout = httpx.Timeout(10.0, read=None)
        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            aconnect_sse(client, "GET", f"{url}/events", headers=headers) as source,
        ):
            assert source.response.status_code == 200
            async for sse in source.aiter_sse():
                if sse.retry is not None:  # the stream's first message
                    self.connected.set()
                if sse.data:
                    assert sse.event != "reset", sse.data
                    envelope = orjson.loads(sse.data)
                    assert envelope["id"] == sse.id
                    self.messages.append(Message(sse.id, sse.event, envelope))


@pytest.fixture
async def nodes(redis_url: str, prefix: str) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    args = ["--redis-url", redis_url, "--redis-prefix", prefix, "--window-ms", "50"]
    async with ServerProcess(args) as node_a, ServerProcess(args) as node_b:
        yield node_a, node_b
        for node in (node_a, node_b):
            output = await anyio.to_thread.run_sync(node.stop)
            assert node.returncode == 0, output
            assert "Traceback" not in output, output


async def wait_for_subscribers(client: httpx.AsyncClient, url: str, count: int) -> None:
    with anyio.fail_after(10):
        # Polling with a deadline: the state is in another process.
        while (await client.get(f"{url}/stats")).json()["hub"]["subscribers"] != count:  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def post_steps(client: httpx.AsyncClient, url: str, steps: range) -> None:
    """A remote worker: a few events per request, in order."""
    for start in range(steps.start, steps.stop, 3):
        body = [
            {"type": "STEP", "source": "worker-1", "data": {"n": n}}
            for n in range(start, min(start + 3, steps.stop))
        ]
        response = await client.post(f"{url}/events", json=body)
        assert response.status_code in (200, 202), response.text
        assert response.json()["accepted"] == len(body)


async def history(client: httpx.AsyncClient, url: str, after: str | None) -> list[dict[str, Any]]:
    params = {"limit": "1000"} if after is None else {"limit": "1000", "after": after}
    body = (await client.get(f"{url}/events/history", params=params)).json()
    assert body["reset"] is None
    events: list[dict[str, Any]] = body["events"]
    return events


async def stored_steps(client: httpx.AsyncClient, url: str) -> int:
    return sum(len(steps_of(event)) for event in await history(client, url, None))


async def history_ids(client: httpx.AsyncClient, url: str, after: str | None) -> list[str]:
    return [event["id"] for event in await history(client, url, after)]


async def test_client_on_b_sees_what_a_worker_posts_to_a_then_resumes_on_a(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    node_a, node_b = nodes
    async with httpx.AsyncClient(timeout=10) as http, anyio.create_task_group() as tg:
        on_b = Stream()
        tg.start_soon(on_b.read, node_b.url)
        with anyio.fail_after(10):
            await on_b.connected.wait()
        await wait_for_subscribers(http, node_b.url, 1)

        await post_steps(http, node_a.url, range(30))
        await wait_until(lambda: len(on_b.steps) >= 30)
        assert on_b.steps == list(range(30))  # every emitted event, in emit order
        ids = [m.id for m in on_b.messages]
        assert ids == await history_ids(http, node_a.url, None)  # same ids and order as A's
        assert ids == await history_ids(http, node_b.url, None)
        tg.cancel_scope.cancel()

    # The client goes away; the worker carries on; the client comes back on node A.
    cursor = on_b.messages[-1].id
    async with httpx.AsyncClient(timeout=10) as http, anyio.create_task_group() as tg:
        await post_steps(http, node_a.url, range(30, 45))
        on_a = Stream()
        tg.start_soon(on_a.read, node_a.url, cursor)
        await wait_until(lambda: len(on_a.steps) >= 15)
        await wait_for_subscribers(http, node_a.url, 1)
        await post_steps(http, node_a.url, range(45, 50))  # and live after the replay
        await wait_until(lambda: len(on_a.steps) >= 20)
        assert on_a.steps == list(range(30, 50))
        assert [m.id for m in on_a.messages] == await history_ids(http, node_a.url, cursor)
        tg.cancel_scope.cancel()


async def test_resume_on_the_other_node_from_a_middle_id(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    node_a, node_b = nodes
    async with httpx.AsyncClient(timeout=10) as http, anyio.create_task_group() as tg:
        for start in range(0, 12, 3):  # separate flushes, so there is a middle to pick
            await post_steps(http, node_a.url, range(start, start + 3))
            with anyio.fail_after(10):
                while await stored_steps(http, node_b.url) < start + 3:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
        ids = await history_ids(http, node_b.url, None)
        assert len(ids) >= 4
        cursor = ids[len(ids) // 2]
        expected = ids[len(ids) // 2 + 1 :]
        on_b = Stream()
        tg.start_soon(on_b.read, node_b.url, cursor)
        await wait_until(lambda: len(on_b.messages) >= len(expected))
        assert [m.id for m in on_b.messages] == expected
        tg.cancel_scope.cancel()


async def test_redis_restart_under_two_nodes_loses_nothing(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    private_redis.start()
    await private_redis.wait_ready()
    args = ["--redis-url", private_redis.url, "--window-ms", "50"]
    async with (
        ServerProcess([*args, "--dead-letter", str(tmp_path / "a.jsonl")]) as node_a,
        ServerProcess([*args, "--dead-letter", str(tmp_path / "b.jsonl")]) as node_b,
        httpx.AsyncClient(timeout=10) as http,
        anyio.create_task_group() as tg,
    ):
        on_b = Stream()
        tg.start_soon(on_b.read, node_b.url)
        await wait_for_subscribers(http, node_b.url, 1)
        await post_steps(http, node_a.url, range(10))
        await wait_until(lambda: len(on_b.steps) >= 10)

        private_redis.kill()
        with anyio.fail_after(10):
            while (await http.get(f"{node_a.url}/health")).status_code != 503:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        await post_steps(http, node_a.url, range(10, 20))  # accepted; the journal is down

        private_redis.start()
        await private_redis.wait_ready()
        await post_steps(http, node_a.url, range(20, 25))
        await wait_until(lambda: len(on_b.steps) >= 25, within=30)
        assert sorted(on_b.steps) == list(range(25))  # nothing lost, nothing twice
        assert [m.id for m in on_b.messages] == await history_ids(http, node_a.url, None)
        assert (await http.get(f"{node_a.url}/health")).status_code == 200
        tg.cancel_scope.cancel()
