"""The service inside an existing FastAPI app: mounted at ``/sse`` beside the host's own
routes, entered in the host's lifespan, fed by worker threads, with batching switched
off at runtime and a subscriber that resumes over real HTTP across a restart of the
host app. And the mis-wired case (mounted, never entered) fails loudly."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from fastapi import FastAPI
from httpx_sse import aconnect_sse

from sse_batcher import Service, SSEBroadcasterMixin

from .servers import serve_app

pytestmark = pytest.mark.anyio


class Renderer(SSEBroadcasterMixin):
    """A worker of the host application, run in a thread."""

    def render(self, job_ids: range) -> None:
        for job_id in job_ids:
            self.emit("JOB_STARTED", {"job_id": job_id})


def host_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    @app.post("/jobs/{job_id}")
    async def start_job(job_id: int) -> dict[str, int]:
        service.batcher.emit("JOB_STARTED", {"job_id": job_id}, source="api")
        return {"started": job_id}

    app.mount("/sse", service.app)
    return app


async def in_threads(service: Service, *work: tuple[str, range]) -> None:
    """Each (worker name, job ids) rendered by its own worker in its own thread."""
    threads = [
        threading.Thread(
            target=Renderer(batcher=service.batcher, worker_name=name).render, args=(ids,)
        )
        for name, ids in work
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        await anyio.to_thread.run_sync(thread.join)


class Subscriber:
    """A browser-style subscriber: reads until the stream ends, resumes by Last-Event-ID."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, dict[str, Any]]] = []  # (id, type, data)
        self.last_id: str | None = None
        self.changed = anyio.Event()

    def job_ids(self) -> list[int]:
        ids: list[int] = []
        for _, _, data in self.messages:
            ids.extend(data["job_ids"] if "job_ids" in data else [data["job_id"]])
        return ids

    async def wait_for(self, expected: set[int]) -> None:
        with anyio.fail_after(20):
            while not expected <= set(self.job_ids()):
                self.changed = anyio.Event()
                await self.changed.wait()

    async def read(
        self, url: str, prefix: str = "/sse", *, task_status: Any = anyio.TASK_STATUS_IGNORED
    ) -> None:
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        async with (
            httpx.AsyncClient(timeout=30) as client,
            aconnect_sse(client, "GET", f"{url}{prefix}/events", headers=headers) as source,
        ):
            assert source.response.status_code == 200
            started = False
            async for message in source.aiter_sse():
                if not message.data:  # the opening retry: block: subscribed from here on
                    if not started:
                        started = True
                        task_status.started()
                    continue
                envelope = orjson.loads(message.data)
                self.messages.append((message.id, envelope["type"], envelope["data"]))
                self.last_id = message.id
                self.changed.set()


async def test_fastapi_host_with_workers_patch_and_resume_across_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "events.db")
    subscriber = Subscriber()

    first = Service(db=db, window_ms=200, max_batch=10)
    async with anyio.create_task_group() as tg:
        async with serve_app(host_app(first)) as url, httpx.AsyncClient(base_url=url) as client:
            # The host's own routes and the service's, side by side.
            assert (await client.get("/hello")).json() == {"hello": "world"}
            assert (await client.get("/sse/health")).status_code == 200
            assert (await client.get("/sse")).headers["location"].endswith("/sse/")
            page = await client.get("/sse/")
            assert page.status_code == 200 and 'src="static/dashboard.js"' in page.text
            for asset in ("dashboard.js", "dashboard.css", "sse-batcher.js"):
                assert (await client.get(f"/sse/static/{asset}")).status_code == 200, asset
            missing = await client.get("/sse/no-such-route")
            assert (missing.status_code, missing.json()) == (404, {"error": "Not Found"})

            # Batching off at runtime for one worker, over HTTP.
            patched = await client.patch("/sse/workers/renderer_b", json={"batching": False})
            assert patched.json() == {"name": "renderer_b", "batching": False}
            assert not first.batcher.batching_enabled("renderer_b")

            await tg.start(subscriber.read, url)
            await in_threads(first, ("renderer_a", range(10)), ("renderer_b", range(100, 105)))
            assert (await client.post("/jobs/500")).json() == {"started": 500}
            await subscriber.wait_for({*range(10), *range(100, 105), 500})
            # Still inside the window when the host app stops: the drain writes them.
            await in_threads(first, ("renderer_a", range(10, 13)))
        # The server stopped; the open stream ended by itself, so the task group finishes.
    by_type = Counter((t, "job_ids" in d) for _, t, d in subscriber.messages)
    assert by_type[("JOBS_BATCH_STARTED", True)] >= 1  # renderer_a's ten, merged
    unbatched = [d for _, t, d in subscriber.messages if 100 <= d.get("job_id", -1) < 105]
    assert len(unbatched) == 5  # renderer_b's, one message each
    assert first.batcher.stats().events_in == 19

    second = Service(db=db, window_ms=200, max_batch=10)
    async with serve_app(host_app(second)) as url, httpx.AsyncClient(base_url=url) as client:
        async with anyio.create_task_group() as tg:
            await tg.start(subscriber.read, url)  # resumes after subscriber.last_id
            await in_threads(second, ("renderer_a", range(13, 16)))
            assert (await client.post("/jobs/501")).status_code == 200
            await subscriber.wait_for({*range(16), *range(100, 105), 500, 501})
            tg.cancel_scope.cancel()
    assert second.batcher.stats().events_in == 4

    seen = subscriber.job_ids()
    expected = [*range(16), *range(100, 105), 500, 501]
    assert sorted(seen) == expected  # nothing lost, nothing twice
    ids = [int(message_id.rpartition(".")[2]) for message_id, _, _ in subscriber.messages]
    assert ids == sorted(set(ids))  # journal order, each message once


async def test_mounted_but_never_entered_answers_503_and_logs_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = Service(db=str(tmp_path / "events.db"))
    app = FastAPI()  # its lifespan does not enter the service
    app.mount("/sse", service.app)
    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.ERROR, logger="sse_batcher"):
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            stream = await client.get("/sse/events")
            ingest = await client.post("/sse/events", json={"type": "A", "source": "w"})
    assert stream.status_code == 503 and ingest.status_code == 503
    assert "async with service" in stream.json()["error"]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "never started" in record.getMessage() and "docs/embedding.md" in record.getMessage()


async def test_events_405_lists_both_methods_as_json(tmp_path: Path) -> None:
    service = Service(db=str(tmp_path / "events.db"))
    async with (
        service,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://host"
        ) as client,
    ):
        response = await client.delete("/events")
    assert response.status_code == 405
    assert response.json() == {"error": "Method Not Allowed"}
    assert {"GET", "POST"} <= {m.strip() for m in response.headers["allow"].split(",")}


ROOT = Path(__file__).resolve().parents[1]


def example_from(path: Path, after: str) -> str:
    text = path.read_text()
    start = text.index("```python\n", text.index(after)) + len("```python\n")
    return text[start : text.index("```", start)]


async def test_the_documented_example_streams_under_its_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's "Use it inside your app" (the same block as docs/embedding.md's first),
    run as written, served over real HTTP."""
    code = example_from(ROOT / "README.md", "Use it inside your app")
    assert code == example_from(ROOT / "docs" / "embedding.md", "# Inside your app")
    assert len(code.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)  # the example's events.db lands here
    namespace: dict[str, Any] = {"__name__": "example"}
    exec(compile(code, "README.md", "exec"), namespace)
    subscriber = Subscriber()
    async with serve_app(namespace["app"]) as url, httpx.AsyncClient(base_url=url) as client:
        async with anyio.create_task_group() as tg:
            await tg.start(subscriber.read, url)
            for job_id in (7, 8, 9):
                assert (await client.post(f"/jobs/{job_id}")).json() == {"started": job_id}
            await subscriber.wait_for({7, 8, 9})
            tg.cancel_scope.cancel()
        assert (await client.get("/sse/")).status_code == 200
    [(_, batch_type, data)] = subscriber.messages
    assert (batch_type, data["job_ids"]) == ("JOBS_BATCH_STARTED", [7, 8, 9])
    assert (tmp_path / "events.db").exists()


async def test_serve_ends_streams_itself_without_sse_starlettes_watcher(tmp_path: Path) -> None:
    """``serve``'s server tells the service when shutdown begins: an open stream ends and
    the server exits well before uvicorn's 30 s grace, with sse-starlette's own
    shutdown detection switched off."""
    import socket

    import uvicorn
    from sse_starlette.sse import AppStatus

    from sse_batcher.cli._server import ServiceServer

    service = Service(db=str(tmp_path / "events.db"))
    sock = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(service.app, log_level="warning", timeout_graceful_shutdown=30)
    listening = anyio.Event()
    server = ServiceServer(
        config, on_started=lambda _: listening.set(), on_shutdown=service.begin_shutdown
    )
    AppStatus.disable_automatic_graceful_drain()
    try:
        subscriber = Subscriber()
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, [sock])
                await listening.wait()
                await tg.start(subscriber.read, url, "")
                service.batcher.emit("JOB_STARTED", {"job_id": 1}, source="w")
                await subscriber.wait_for({1})
                server.should_exit = True
                # Both tasks end by themselves: the stream, then the server.
    finally:
        AppStatus.enable_automatic_graceful_drain_mode()
        sock.close()
    assert service.lifecycle.value == "closed"
