"""GET /events over real sockets: uvicorn (httptools) on loopback, httpx-sse clients.

Headers, retry and heartbeats, live delivery, stream-only events, filters, resume
and resets, slow consumers, the subscriber limit, shutdown and stream auth.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from httpx_sse import EventSource, ServerSentEvent, aconnect_sse
from starlette.applications import Starlette

from sse_batcher import AggregationRule, SQLiteJournal, SSEEventBatcher, create_app

from .servers import serve_app

pytestmark = pytest.mark.anyio

Running = Callable[..., AbstractAsyncContextManager[tuple[str, Starlette]]]


@pytest.fixture
def running(tmp_path: Path) -> Running:
    """``async with running(**create_app_kwargs) as (url, app)``: a served app on a
    SQLite journal in tmp_path; ``batcher={...}`` passes batcher options."""

    @asynccontextmanager
    async def make(
        *, batcher: dict[str, Any] | None = None, **kwargs: Any
    ) -> AsyncIterator[tuple[str, Starlette]]:
        journal = SQLiteJournal(tmp_path / "stream.db")
        app = create_app(SSEEventBatcher(journal, **{"window": 0.02, **(batcher or {})}), **kwargs)
        async with serve_app(app) as url:
            yield url, app

    return make


@asynccontextmanager
async def stream(
    url: str, path: str = "/events", headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[EventSource, AsyncIterator[ServerSentEvent]]]:
    """An open SSE stream whose first message (``retry:``) was read: the subscriber is
    registered with the hub when this yields."""
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        aconnect_sse(client, "GET", path, headers=headers or {}) as source,
    ):
        events = source.aiter_sse()
        first = await anext(events)
        assert first.retry == 3000
        yield source, events


async def take(events: AsyncIterator[ServerSentEvent], count: int) -> list[ServerSentEvent]:
    got = []
    with anyio.fail_after(10):
        while len(got) < count:
            got.append(await anext(events))
    return got


def job_ids(messages: list[ServerSentEvent]) -> list[int]:
    ids: list[int] = []
    for message in messages:
        data = message.json()["data"]
        ids.extend(data["job_ids"] if "job_ids" in data else [data["job_id"]])
    return ids


async def test_headers_retry_and_heartbeats(running: Running) -> None:
    async with (
        running(heartbeat=0.1) as (url, _),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        client.stream("GET", "/events", headers={"Accept-Encoding": "gzip"}) as response,
    ):
        assert response.status_code == 200
        headers = response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-store"
        assert headers["x-accel-buffering"] == "no"
        assert "connection" not in headers
        assert "content-encoding" not in headers
        chunks = response.aiter_raw()
        with anyio.fail_after(5):
            assert await anext(chunks) == b"retry: 3000\n\n"
            assert await anext(chunks) == b":\n\n"


async def test_live_events_carry_id_type_and_envelope(running: Running) -> None:
    async with running() as (url, app), stream(url) as (_, events):
        app.state.batcher.emit("JOB_STARTED", {"job_id": 1}, source="w1")
        [message] = await take(events, 1)
        envelope = message.json()
        assert message.event == "JOB_STARTED"
        assert message.id == envelope["id"] == f"{app.state.journal.epoch}.1"
        assert (envelope["type"], envelope["source"], envelope["data"]) == (
            "JOB_STARTED",
            "w1",
            {"job_id": 1},
        )


async def test_a_stream_only_event_carries_no_id(running: Running) -> None:
    rules = [AggregationRule(types=("PROGRESS",), persist=False)]
    async with running(batcher={"rules": rules}) as (url, app), stream(url) as (_, events):
        app.state.batcher.emit("PROGRESS", {"job_id": 1, "pct": 50}, source="w1")
        app.state.batcher.emit("JOB_DONE", {"job_id": 1}, source="w1")
        progress, done = await take(events, 2)
        assert (progress.event, progress.id, progress.json()["id"]) == ("PROGRESS", "", None)
        assert done.id == f"{app.state.journal.epoch}.1"
        assert await app.state.journal.read_after(None, 10) != []
        assert [r.event.type for r in await app.state.journal.read_after(None, 10)] == ["JOB_DONE"]


async def test_filters_by_type_include_batch_types_and_by_source(running: Running) -> None:
    async with (
        running(batcher={"window": 0.2}) as (url, app),
        stream(url, "/events?types=JOB_STARTED") as (_, by_type),
        stream(url, "/events?sources=w2") as (_, by_source),
    ):
        batcher = app.state.batcher
        for n in range(3):
            batcher.emit("JOB_STARTED", {"job_id": n}, source="w1")
        batcher.emit("JOB_DONE", {"job_id": 9}, source="w1")
        batcher.emit("JOB_DONE", {"job_id": 10}, source="w2")
        await batcher.flush()
        batcher.emit("JOB_STARTED", {"job_id": 11}, source="w2")
        [batch, single] = await take(by_type, 2)
        assert (batch.event, job_ids([batch])) == ("JOBS_BATCH_STARTED", [0, 1, 2])
        assert (single.event, job_ids([single])) == ("JOB_STARTED", [11])
        assert [(m.event, job_ids([m])) for m in await take(by_source, 2)] == [
            ("JOB_DONE", [10]),
            ("JOB_STARTED", [11]),
        ]


async def test_resume_by_header_or_query_replays_then_goes_live(running: Running) -> None:
    async with running(batcher={"max_batch": 1}) as (url, app):
        batcher = app.state.batcher
        for n in range(5):
            batcher.emit("JOB_STARTED", {"job_id": n}, source="w1")
        await batcher.flush()
        epoch = app.state.journal.epoch
        async with stream(url, "/events", {"Last-Event-ID": f"{epoch}.2"}) as (_, events):
            replayed = await take(events, 3)
            assert job_ids(replayed) == [2, 3, 4]
            batcher.emit("JOB_STARTED", {"job_id": 99}, source="w1")
            assert job_ids(await take(events, 1)) == [99]
        cursor = replayed[0].id  # the id of job 2
        async with stream(url, f"/events?last_event_id={cursor}") as (_, events):
            assert job_ids(await take(events, 3)) == [3, 4, 99]
            batcher.emit("JOB_STARTED", {"job_id": 100}, source="w1")
            assert job_ids(await take(events, 1)) == [100]


async def test_an_unknown_cursor_gets_a_reset_event(running: Running) -> None:
    async with (
        running() as (url, app),
        stream(url, "/events?last_event_id=elsewhere.7") as (
            _,
            events,
        ),
    ):
        [reset] = await take(events, 1)
        assert reset.event == "reset"
        assert reset.json()["reason"] == "epoch"
        assert reset.json()["continue"] == "live"
        app.state.batcher.emit("JOB_STARTED", {"job_id": 1}, source="w1")
        assert job_ids(await take(events, 1)) == [1]


async def test_bad_on_reset_value_is_a_400(running: Running) -> None:
    async with running() as (url, _), httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/events?on_reset=never")).status_code == 400


async def test_a_slow_subscriber_is_dropped_while_fast_ones_get_everything(
    running: Running,
) -> None:
    rounds = 160
    async with running(buffer_size=40, batcher={"max_batch": 10}) as (url, app):
        batcher = app.state.batcher
        # The slow client: a raw socket with a tiny receive window that never reads.
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        host, port = url.removeprefix("http://").split(":")
        slow.connect((host, int(port)))
        slow.sendall(f"GET /events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        try:
            head = b""
            with anyio.fail_after(10):
                while b"retry: 3000" not in head:  # registered with the hub once seen
                    head += await anyio.to_thread.run_sync(slow.recv, 1024)
            async with stream(url) as (_, fast_a), stream(url) as (_, fast_b):
                received: dict[str, list[int]] = {"a": [], "b": []}
                payload = "x" * 2000
                for r in range(rounds):
                    for n in range(10):
                        batcher.emit(
                            "JOB_STARTED", {"job_id": r * 10 + n, "pad": payload}, source="w1"
                        )
                    await batcher.flush()
                    received["a"] += job_ids(await take(fast_a, 1))
                    received["b"] += job_ids(await take(fast_b, 1))
                assert received["a"] == received["b"] == list(range(rounds * 10))
                stats = app.state.hub.stats()
                assert stats["slow_disconnects"] == 1
                assert stats["subscribers"] == 2
        finally:
            slow.close()


async def test_beyond_max_subscribers_a_stream_gets_a_retry_hint_and_closes(
    running: Running,
) -> None:
    async with (
        running(max_subscribers=2) as (url, app),
        stream(url),
        stream(url),
        httpx.AsyncClient(base_url=url, timeout=5) as client,
    ):
        response = await client.get("/events")  # returns: the body ends at once
        assert response.status_code == 200
        assert response.text == ": too many subscribers; try again later\nretry: 30000\n\n"
        assert app.state.hub.stats()["refused_total"] == 1


async def test_shutdown_ends_open_streams_promptly_and_cleanly(running: Running) -> None:
    outcome: dict[str, Any] = {}
    connected = anyio.Event()

    async def listen(url: str) -> None:
        async with stream(url) as (_, events):
            connected.set()
            try:
                outcome["messages"] = [m async for m in events]
            except httpx.HTTPError as exc:  # an unfinished response would land here
                outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    async with anyio.create_task_group() as tg:
        async with running() as (url, app):
            tg.start_soon(listen, url)
            with anyio.fail_after(10):
                await connected.wait()
            app.state.batcher.emit("JOB_STARTED", {"job_id": 1}, source="w1")
            started = time.monotonic()
        stopped = time.monotonic()
    assert "error" not in outcome
    assert job_ids(outcome["messages"]) == [1]
    assert outcome["ended"] - started < 3
    assert stopped - started < 5


async def test_the_stream_accepts_the_subscribe_token_in_the_query(running: Running) -> None:
    async with running(subscribe_token="sub") as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            assert (await client.get("/events")).status_code == 401
            assert (await client.get("/events?token=wrong")).status_code == 403
        async with stream(url, "/events?token=sub"), stream(url, "/events", _bearer("sub")):
            pass


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_an_oversize_body_gets_413_over_the_network(running: Running) -> None:
    async with (
        running(max_body_bytes=1 << 20) as (url, app),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        big = orjson.dumps([{"type": "A", "source": "w", "data": {"x": "y" * 1000}}] * 2000)
        response = await client.post("/events", content=big)
        assert response.status_code == 413
        ok = await client.post("/events", json={"type": "A", "source": "w"})
        assert ok.status_code == 202
        assert app.state.batcher.stats().events_in == 1
