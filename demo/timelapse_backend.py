"""A timelapse backend whose workers stream their events through sse_batcher.

Run it, then open http://127.0.0.1:8000/sse/ ::

    python demo/timelapse_backend.py [--port 8000] [--db timelapse_events.db]

What to copy into your own backend:

1. One ``Service``: journal, batcher and the ASGI app (SSE stream, ingest,
   history, workers, dashboard), mounted in the backend's own app under ``/sse``
   (any prefix works) beside the backend's routes.
2. The backend's lifespan enters the service (``async with service``): that opens
   the journal and the batcher, and leaving it drains them at shutdown. A mounted
   app's own lifespan never runs, so this line is what makes streaming work.
3. Workers mix in ``SSEBroadcasterMixin`` and call ``self.emit(...)``: from a plain
   thread (``emit`` is thread-safe and never blocks) or from an async task.
4. ``BatchLogHandler`` turns ordinary ``logging`` calls inside jobs into live events.
5. The workers start inside the lifespan, once the service is open, and stop
   before it drains, so nothing they emitted is lost.
"""

from __future__ import annotations

import argparse
import logging
import random
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from sse_batcher import AggregationRule, BatchLogHandler, Service, SSEBroadcasterMixin

log = logging.getLogger("timelapse.thumbnails")


class ThumbnailWorker(SSEBroadcasterMixin):
    """A thread-based worker, as in many existing backends."""

    def run(self, stop: threading.Event) -> None:
        job_id = 0
        while not stop.is_set():
            # The scheduler hands over a burst of images at once: batching turns
            # these JOB_STARTED events into one JOBS_BATCH_STARTED.
            jobs = []
            for _ in range(random.randint(3, 6)):
                job_id += 1
                jobs.append((job_id, random.randint(1, 12)))
            for job, camera in jobs:
                self.emit("JOB_STARTED", {"job_id": job, "camera_id": camera})
            for job, camera in jobs:
                log.info("Rendering thumbnail for camera %d", camera, extra={"job_id": job})
                for percent in (33, 66, 100):
                    stop.wait(0.1)
                    self.emit("JOB_PROGRESS", {"job_id": job, "percent": percent})
                self.emit("JOB_COMPLETED", {"job_id": job, "camera_id": camera})
            stop.wait(3.0)


class OverlayWorker(SSEBroadcasterMixin):
    """An async worker; started with use_batching=False, its events go out one by one."""

    async def run(self) -> None:
        job_id = 10_000
        while True:
            job_id += 1
            await self.aemit("JOB_STARTED", {"job_id": job_id, "camera_id": 7})
            await anyio.sleep(1.5)
            await self.aemit("JOB_COMPLETED", {"job_id": job_id, "camera_id": 7})
            await anyio.sleep(1.0)


def build_app(db: str) -> Starlette:
    """The backend: its own routes, the service under /sse, the workers in its lifespan."""
    service = Service(
        db=db,
        window_ms=500,
        max_batch=10,
        # Progress is state: within a window keep only each job's newest update.
        rules=[AggregationRule(types=("JOB_PROGRESS",), mode="latest", id_fields=("job_id",))],
    )
    batcher = service.batcher  # what the backend's own code emits into

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with service:  # journal, hub and batcher are open from here
            handler = BatchLogHandler(batcher)  # source: the logger's name
            log.addHandler(handler)
            log.setLevel(logging.INFO)
            stop = threading.Event()
            thumbnails = threading.Thread(
                target=ThumbnailWorker(batcher=batcher).run, args=(stop,), name="thumbnails"
            )
            thumbnails.start()
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(OverlayWorker(batcher=batcher, use_batching=False).run)
                    yield
                    tg.cancel_scope.cancel()
            finally:
                stop.set()
                await anyio.to_thread.run_sync(thumbnails.join)
                log.removeHandler(handler)
        # Leaving the service drained the batcher: every event is in the journal.

    async def cameras(request: Request) -> JSONResponse:  # one of the backend's own routes
        return JSONResponse({"cameras": list(range(1, 13))})

    return Starlette(
        routes=[Route("/cameras", cameras), Mount("/sse", service.app)], lifespan=lifespan
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--db", default="timelapse_events.db")
    args = parser.parse_args()
    print(f"Open http://{args.host}:{args.port}/sse/ to watch events batch live", flush=True)
    try:
        uvicorn.run(build_app(args.db), host=args.host, port=args.port, log_level="warning")
    except KeyboardInterrupt:
        pass  # uvicorn re-raises Ctrl-C after its graceful shutdown


if __name__ == "__main__":
    main()
