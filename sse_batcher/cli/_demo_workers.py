"""Simulated workers of a timelapse backend, for ``sse-batcher demo`` and the dashboard.

Three workers, each an :class:`SSEBroadcasterMixin`, run as anyio tasks in a task
group owned by :class:`DemoWorkers`:

* ``SchedulerWorker`` ticks every few seconds and starts a burst of 3-8 capture
  jobs at once (the burst that batching turns into one ``JOBS_BATCH_STARTED``),
  then hands every finished capture to the two other workers.
* ``ThumbnailWorker`` renders thumbnails, three at a time, reporting progress.
* ``OverlayWorker`` renders overlays two at a time, runs with ``use_batching=False``
  (its events go out one by one, for contrast) and narrates its work through
  ``logging`` and a :class:`BatchLogHandler` ("Rendering overlay for camera 7").

Every job draws its plan (duration, steps, failure) from a generator seeded with
``(seed, job id)``, so a given seed produces the same jobs, progress and failures
whatever the scheduling; only the wall-clock interleaving differs.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from sse_batcher._exceptions import ConfigError
from sse_batcher._lifecycle import Resource
from sse_batcher.batching._rules import AggregationRule
from sse_batcher.workers._log_handler import BatchLogHandler
from sse_batcher.workers._mixin import EventBatcher, SSEBroadcasterMixin

__all__ = [
    "DEMO_RULES",
    "DemoWorkers",
    "OverlayWorker",
    "SchedulerWorker",
    "ThumbnailWorker",
]

DEMO_RULES: tuple[AggregationRule, ...] = (
    # Progress is state, not history: within a window only each job's newest survives.
    AggregationRule(types=("JOB_PROGRESS",), mode="latest", id_fields=("job_id",)),
)
"""The aggregation rules the demo passes to its batcher."""

CAMERAS = tuple(range(1, 13))
OVERLAY_LOGGER = "timelapse.overlay"


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work handed from the scheduler to a worker."""

    job_id: int
    camera_id: int
    image: str


class DemoWorker(SSEBroadcasterMixin):
    """Shared plumbing: a seed, a speed factor, and a per-job random plan."""

    kind = "job"

    def __init__(self, *, seed: int, speed: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.speed = speed

    def plan(self, job_id: int) -> random.Random:
        """The job's own generator: same seed and id, same plan, whatever the timing."""
        return random.Random(f"{self.seed}:{self.kind}:{job_id}")

    async def pause(self, seconds: float) -> None:
        """Simulated work; ``speed`` > 1 compresses time (tests run the demo fast)."""
        await anyio.sleep(seconds / self.speed)


class SchedulerWorker(DemoWorker):
    """Every 3-6 s a tick starts 3-8 capture jobs at once, then dispatches the images."""

    kind = "capture"

    def __init__(self, *, first_job_id: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._job_ids = itertools.count(first_job_id)
        self.ticks = 0

    async def run(
        self,
        thumbnails: MemoryObjectSendStream[Job],
        overlays: MemoryObjectSendStream[Job],
    ) -> None:
        """Tick until cancelled; the first tick is immediate so a short run sees a burst."""
        rng = random.Random(f"{self.seed}:scheduler")
        async with thumbnails, overlays:
            while True:
                self.ticks += 1
                cameras = sorted(rng.sample(CAMERAS, rng.randint(3, 8)))
                jobs = [(next(self._job_ids), camera) for camera in cameras]
                for job_id, camera in jobs:
                    self.emit(
                        "JOB_STARTED",
                        {"job_id": job_id, "camera_id": camera, "kind": self.kind},
                    )
                async with anyio.create_task_group() as tg:
                    for job_id, camera in jobs:
                        tg.start_soon(self._capture, job_id, camera, thumbnails, overlays)
                await self.pause(rng.uniform(3.0, 6.0))

    async def _capture(
        self,
        job_id: int,
        camera: int,
        thumbnails: MemoryObjectSendStream[Job],
        overlays: MemoryObjectSendStream[Job],
    ) -> None:
        plan = self.plan(job_id)
        duration = plan.uniform(0.2, 1.2)
        await self.pause(duration)
        base = {"job_id": job_id, "camera_id": camera, "kind": self.kind}
        if plan.random() < 0.04:
            self.emit("JOB_FAILED", {**base, "error": "camera did not answer (timeout)"})
            return
        image = f"camera-{camera:02d}/{job_id:06d}.jpg"
        self.emit("JOB_COMPLETED", {**base, "image": image, "duration_ms": round(duration * 1000)})
        for stream, offset in ((thumbnails, 100_000), (overlays, 200_000)):
            try:
                stream.send_nowait(Job(offset + job_id, camera, image))
            except anyio.WouldBlock:
                pass  # that worker is behind; a real scheduler would retry next tick


class _QueueWorker(DemoWorker):
    """A worker that takes jobs from a stream, ``concurrency`` at a time."""

    concurrency = 1

    async def run(self, jobs: MemoryObjectReceiveStream[Job]) -> None:
        """Process jobs until the stream closes or the task is cancelled."""
        async with jobs, anyio.create_task_group() as tg:
            for _ in range(self.concurrency):
                tg.start_soon(self._consume, jobs.clone())

    async def _consume(self, jobs: MemoryObjectReceiveStream[Job]) -> None:
        async with jobs:
            async for job in jobs:
                await self.process(job)

    async def process(self, job: Job) -> None:
        raise NotImplementedError


class ThumbnailWorker(_QueueWorker):
    """Renders three sizes per image, reporting progress after each."""

    kind = "thumbnail"
    concurrency = 3
    sizes = ("small", "medium", "large")

    async def process(self, job: Job) -> None:
        """Started, one progress event per size, then completed or failed."""
        plan = self.plan(job.job_id)
        base = {"job_id": job.job_id, "camera_id": job.camera_id, "kind": self.kind}
        self.emit("JOB_STARTED", {**base, "image": job.image})
        fail_at = plan.randrange(len(self.sizes)) if plan.random() < 0.05 else None
        for step, size in enumerate(self.sizes):
            await self.pause(plan.uniform(0.1, 0.5))
            if step == fail_at:
                self.emit("JOB_FAILED", {**base, "error": f"{size} thumbnail: corrupt JPEG"})
                return
            percent = round(100 * (step + 1) / len(self.sizes))
            self.emit("JOB_PROGRESS", {**base, "percent": percent, "size": size})
        self.emit("JOB_COMPLETED", {**base, "sizes": list(self.sizes)})


class OverlayWorker(_QueueWorker):
    """Composites overlays; narrates each step through ``logging``."""

    kind = "overlay"
    concurrency = 2

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log = logging.getLogger(OVERLAY_LOGGER)

    async def process(self, job: Job) -> None:
        """Started, logs, two progress steps, then completed (or failed and an error log)."""
        plan = self.plan(job.job_id)
        base = {"job_id": job.job_id, "camera_id": job.camera_id, "kind": self.kind}
        extra = {"job_id": job.job_id, "camera_id": job.camera_id}
        self.emit("JOB_STARTED", {**base, "image": job.image})
        self.log.info("Creating worktree for job %d", job.job_id, extra=extra)
        await self.pause(plan.uniform(0.2, 0.6))
        self.log.info("Rendering overlay for camera %d", job.camera_id, extra=extra)
        for percent in (50, 100):
            await self.pause(plan.uniform(0.2, 0.8))
            self.emit("JOB_PROGRESS", {**base, "percent": percent})
        if plan.random() < 0.06:
            self.emit("JOB_FAILED", {**base, "error": "font cache missing"})
            self.log.error(
                "Overlay failed for camera %d: font cache missing", job.camera_id, extra=extra
            )
            return
        self.emit("JOB_COMPLETED", {**base, "output": job.image.replace(".jpg", "-overlay.jpg")})


class DemoWorkers(Resource):
    """The three demo workers, running in a task group this object owns.

    ``async with DemoWorkers(batcher, seed=1):`` starts them (the batcher must be
    running); leaving the block cancels them and detaches the log handler.

    Args:
        batcher: the running batcher they emit into.
        seed: makes the jobs reproducible; None draws one at random.
        speed: time compression (2.0 = twice as many events per second).
    """

    def __init__(
        self, batcher: EventBatcher, *, seed: int | None = None, speed: float = 1.0
    ) -> None:
        if speed <= 0:
            raise ConfigError(f"speed must be positive, not {speed}")
        self.seed = random.SystemRandom().randrange(2**32) if seed is None else seed
        common: dict[str, Any] = {"batcher": batcher, "seed": self.seed, "speed": speed}
        self.scheduler = SchedulerWorker(**common)
        self.thumbnails = ThumbnailWorker(**common)
        # Unbatched on purpose: its events go out one by one, next to batched neighbours.
        self.overlays = OverlayWorker(use_batching=False, **common)
        self.log_handler = BatchLogHandler(batcher)

    @property
    def workers(self) -> tuple[DemoWorker, ...]:
        """The three workers, scheduler first."""
        return (self.scheduler, self.thumbnails, self.overlays)

    def events_emitted(self) -> int:
        """Events the workers and the log handler got into the batcher."""
        return (
            sum(w.emit_stats().emitted for w in self.workers)
            + self.log_handler.stats()["records_sent"]
        )

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        log = logging.getLogger(OVERLAY_LOGGER)
        old_level, old_propagate = log.level, log.propagate
        # INFO reaches the handler; the console (root's handlers) stays quiet.
        log.setLevel(logging.INFO)
        log.propagate = False
        log.addHandler(self.log_handler)
        try:
            thumbs_send, thumbs_recv = anyio.create_memory_object_stream[Job](64)
            overlays_send, overlays_recv = anyio.create_memory_object_stream[Job](64)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.thumbnails.run, thumbs_recv, name="thumbnail_worker")
                tg.start_soon(self.overlays.run, overlays_recv, name="overlay_worker")
                tg.start_soon(self.scheduler.run, thumbs_send, overlays_send, name="scheduler")
                yield
                tg.cancel_scope.cancel()
        finally:
            log.removeHandler(self.log_handler)
            log.setLevel(old_level)
            log.propagate = old_propagate

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the workers until cancelled (for ``tg.start(workers.run)``)."""
        async with self:
            task_status.started()
            await anyio.sleep_forever()
