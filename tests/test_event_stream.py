"""The ``GET /events`` response: the hub writes to ready streams from its own loop.

Over real sockets (uvicorn, httptools, loopback): HEAD, a client going away while
nothing is sent, a slow consumer dropped and resuming with no gap and no duplicate,
replay → live while events keep coming, and SIGTERM of a ``serve`` process ending
open streams cleanly. In process, with an ASGI ``send`` that waits on every call
(what another server may do): every message still arrives once, in order.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse
from starlette.applications import Starlette

from sse_batcher import EncodedEvent, Event, Hub, SQLiteJournal, SSEEventBatcher, create_app
from sse_batcher.service._response import EventStream

from .reliability.helpers import RawSSEClient, poll
from .servers import ServerProcess, serve_app

pytestmark = pytest.mark.anyio

Running = Callable[..., AbstractAsyncContextManager[tuple[str, Starlette]]]


@pytest.fixture
def running(tmp_path: Path) -> Running:
    @asynccontextmanager
    async def make(
        *, batcher: dict[str, Any] | None = None, **kwargs: Any
    ) -> AsyncIterator[tuple[str, Starlette]]:
        journal = SQLiteJournal(tmp_path / "stream.db")
        app = create_app(SSEEventBatcher(journal, **{"window": 0.02, **(batcher or {})}), **kwargs)
        async with serve_app(app) as url:
            yield url, app

    return make


def jobs(messages: list[Any]) -> list[int]:
    """Job ids, in order, of SSE messages carrying ``job_id`` or batches of them."""
    out: list[int] = []
    for message in messages:
        if not message.data:
            continue
        data = orjson.loads(message.data)["data"]
        out.extend(data["job_ids"] if "job_ids" in data else [data["job_id"]])
    return out


async def test_head_answers_the_headers_and_opens_no_stream(running: Running) -> None:
    async with running() as (url, app), httpx.AsyncClient(base_url=url, timeout=5) as client:
        response = await client.head("/events")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.content == b""
        assert app.state.hub.stats()["subscribed_total"] == 0


async def test_a_client_that_goes_away_is_unregistered_with_nothing_sent(
    running: Running,
) -> None:
    # No heartbeat and no event in the test's lifetime: only the disconnect can end it.
    async with running(heartbeat=600) as (url, app):
        client = RawSSEClient(url)
        await client.connect()
        assert await client.read_head() == 200
        await client.read_until(lambda c: c.parser.retry is not None, 10)
        hub = app.state.hub
        await poll(lambda: hub.subscriber_count == 1, 5, "the stream to register")
        client.close()
        await poll(lambda: hub.subscriber_count == 0, 5, "the hub to see the disconnect")


async def test_a_slow_consumer_is_dropped_then_resumes_with_no_gap_and_no_duplicate(
    running: Running,
) -> None:
    async with running(buffer_size=20, batcher={"max_batch": 10}) as (url, app):
        batcher, hub = app.state.batcher, app.state.hub
        slow = RawSSEClient(url, rcvbuf=4096)  # reads the head, then nothing for a while
        await slow.connect()
        assert await slow.read_head() == 200
        await slow.read_until(lambda c: c.parser.retry is not None, 10)
        await poll(lambda: hub.subscriber_count == 1, 5, "the stream to register")
        pad = "p" * 4000
        sent = 0
        with anyio.fail_after(60):
            while hub.stats()["slow_disconnects"] == 0:
                for _ in range(10):
                    batcher.emit("JOB_STARTED", {"job_id": sent, "pad": pad}, source="w1")
                    sent += 1
                await batcher.flush()
        assert hub.subscriber_count == 0
        # The client now reads what reached it; the server ended (or closed) the stream.
        await slow.read_until(lambda c: False, 20)
        first = jobs(slow.messages)
        assert first == list(range(len(first)))  # what it got before the drop: in order
        last_id = slow.messages[-1].last_event_id
        slow.close()
        for _ in range(5):  # more events while it was away
            batcher.emit("JOB_STARTED", {"job_id": sent}, source="w1")
            sent += 1
        await batcher.flush()
        again = RawSSEClient(url, headers={"Last-Event-ID": last_id})
        await again.connect()
        assert await again.read_head() == 200
        await again.read_until(lambda c: len(first) + len(jobs(c.messages)) >= sent, 20)
        again.close()
        assert first + jobs(again.messages) == list(range(sent))
        assert hub.stats()["slow_disconnects"] == 1


async def test_replay_hands_over_to_live_while_events_keep_coming(running: Running) -> None:
    total = 400
    async with running(batcher={"max_batch": 7}) as (url, app):
        batcher = app.state.batcher
        for n in range(100):
            batcher.emit("JOB_STARTED", {"job_id": n}, source="w1")
        await batcher.flush()

        async def produce() -> None:
            for n in range(100, total):
                batcher.emit("JOB_STARTED", {"job_id": n}, source="w1")
                if n % 5 == 0:
                    await batcher.flush()
            await batcher.flush()

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            client = RawSSEClient(url, f"/events?last_event_id={app.state.journal.epoch}.0")
            await client.connect()
            assert await client.read_head() == 200
            await client.read_until(lambda c: len(jobs(c.messages)) >= total, 20)
            client.close()
        assert jobs(client.messages) == list(range(total))


async def test_sigterm_ends_open_streams_cleanly_before_the_server_exits(tmp_path: Path) -> None:
    outcome: dict[str, Any] = {}
    async with ServerProcess(["--db", str(tmp_path / "term.db"), "--window-ms", "10"]) as server:
        async with httpx.AsyncClient(timeout=10) as client:
            async with aconnect_sse(client, "GET", f"{server.url}/events") as source:
                events = source.aiter_sse()
                assert (await anext(events)).retry == 3000
                response = await client.post(
                    f"{server.url}/events",
                    json={"type": "JOB_STARTED", "source": "w", "data": {"job_id": 1}},
                )
                assert response.status_code == 202
                with anyio.fail_after(10):
                    outcome["first"] = await anext(events)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(anyio.to_thread.run_sync, server.stop)
                        started = time.monotonic()
                        # An unfinished chunked body would raise here instead of ending.
                        outcome["rest"] = [m async for m in events]
                        outcome["ended"] = time.monotonic() - started
        assert server.returncode == 0
    assert jobs([outcome["first"]]) == [1]
    assert outcome["rest"] == []
    assert outcome["ended"] < 5  # the exit watcher polls twice a second; grace is 2 s


async def test_a_send_that_always_waits_still_delivers_everything_once_in_order(
    tmp_path: Path,
) -> None:
    """Another ASGI server's ``send`` may suspend on every call: every hub write then
    goes through the stream's task (``pending``), and nothing is lost or repeated."""
    bodies: list[bytes] = []
    gone = anyio.Event()

    async def send(message: dict[str, Any]) -> None:
        await anyio.lowlevel.checkpoint()  # suspends, as a queue-based server's would
        if message["type"] == "http.response.body":
            bodies.append(message["body"])

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async with SQLiteJournal(tmp_path / "waits.db") as journal, Hub(journal) as hub:
        response = EventStream(
            hub, cursor=None, types=None, sources=None, on_reset="live", retry_ms=3000, grace=1
        )
        scope = {"type": "http", "method": "GET"}
        async with anyio.create_task_group() as tg:
            tg.start_soon(response, scope, receive, send)
            await poll(lambda: hub.subscriber_count == 1, 5, "the stream to register")
            for n in range(200):
                event = Event("JOB_STARTED", "w", {"job_id": n})
                await journal.append([EncodedEvent(event, b'{"job_id":%d}' % n)])
                if n % 3 == 0:
                    await anyio.lowlevel.checkpoint()
            await poll(lambda: b"".join(bodies).count(b"\nid: ") >= 200, 5, "every event")
            gone.set()
        stream = b"".join(bodies)
        ids = [line for line in stream.split(b"\n") if line.startswith(b"id: ")]
        assert [int(i.rsplit(b".", 1)[1]) for i in ids] == list(range(1, 201))
        assert hub.subscriber_count == 0
