"""The naive baseline: an sse-starlette broadcaster, one SSE message per event.

What a first version of the service usually looks like: ``POST /events`` gives
each event an id and puts it on every connected client's ``asyncio.Queue``; each
client's ``EventSourceResponse`` generator takes one event at a time and yields
one ``ServerSentEvent``, so every event costs one encode and one socket write per
client. No journal, no batching, no validation beyond JSON: the baseline is given
every advantage except the per-event write.

``python -m bench.naive_server --port P`` serves it. With ``--produce-rate R`` it
also publishes R events/s itself once ``--expect N`` clients are connected (the
latency scenario), records when each event was published and writes that to
``--out`` before exiting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["Broadcaster", "build_app", "main"]


class Broadcaster:
    """Per-client unbounded queues; ``publish`` puts each event on every queue."""

    def __init__(self) -> None:
        self.clients: set[asyncio.Queue[ServerSentEvent]] = set()
        self.next_id = 0
        self.published_at: dict[int, float] = {}
        self.record = False

    def publish(self, event_type: str, source: str, data: Any, ts: float) -> None:
        self.next_id += 1
        event_id = self.next_id
        envelope = orjson.dumps(
            {"id": str(event_id), "type": event_type, "source": source, "ts": ts, "data": data}
        ).decode()
        message = ServerSentEvent(envelope, id=str(event_id), event=event_type)
        for queue in self.clients:
            queue.put_nowait(message)
        if self.record:
            self.published_at[event_id] = time.monotonic()


def build_app(broadcaster: Broadcaster, lifespan: Any = None) -> Starlette:
    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def stream(request: Request) -> Response:
        async def messages() -> AsyncIterator[ServerSentEvent]:
            queue: asyncio.Queue[ServerSentEvent] = asyncio.Queue()
            broadcaster.clients.add(queue)
            try:
                yield ServerSentEvent(comment="ok")  # registered: the client may start
                while True:
                    yield await queue.get()
            finally:
                broadcaster.clients.discard(queue)

        return EventSourceResponse(messages())

    async def ingest(request: Request) -> Response:
        body = orjson.loads(await request.body())
        entries = body if isinstance(body, list) else [body]
        for entry in entries:
            broadcaster.publish(
                entry["type"], entry["source"], entry.get("data", {}), entry.get("ts", time.time())
            )
        return Response(
            orjson.dumps({"accepted": len(entries)}), 202, media_type="application/json"
        )

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/events", stream, methods=["GET"]),
            Route("/events", ingest, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


async def produce(
    broadcaster: Broadcaster, server: uvicorn.Server, args: argparse.Namespace
) -> None:
    """Latency mode: wait for the clients, publish at a steady rate, then END and exit."""
    deadline = time.monotonic() + 120
    while len(broadcaster.clients) < args.expect and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # polling a condition with a deadline
    broadcaster.record = True
    interval = 1.0 / args.produce_rate
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < args.duration:
        await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
        data = {"job_id": n, "progress": n % 100, "mono": time.monotonic()}
        broadcaster.publish("JOB_PROGRESS", "bench-worker", data, time.time())
        n += 1
    await asyncio.sleep(0.5)
    broadcaster.record = False
    broadcaster.publish("END", "bench-worker", {}, time.time())
    published = {str(k): v for k, v in broadcaster.published_at.items()}
    await asyncio.to_thread(Path(args.out).write_text, json.dumps(published))
    await asyncio.sleep(2.0)  # the clients see END and close
    server.should_exit = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--produce-rate", type=float, default=0.0)
    parser.add_argument("--expect", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    broadcaster = Broadcaster()
    server: uvicorn.Server

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = None
        if args.produce_rate > 0:
            task = asyncio.ensure_future(produce(broadcaster, server, args))
        yield
        if task is not None:
            task.cancel()

    config = uvicorn.Config(
        build_app(broadcaster, lifespan),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
