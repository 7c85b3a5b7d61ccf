"""SinkSet: the fan-out from the journal writer to every sink (see ``_sink``'s diagram).

One runner per sink: its bounded buffer, its writer task (in order, retried forever
with backoff and jitter: the journal already holds the events) and its counters. The
buffers share one memory budget; over it, the sink that is furthest behind sheds its
oldest non-error events first, counted and logged.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

from sse_batcher._backoff import backoff_delay
from sse_batcher._exceptions import ConfigError
from sse_batcher._lifecycle import Resource
from sse_batcher.batching._events import StoredEvent
from sse_batcher.batching._sink import Sink, event_nbytes, is_error_event

__all__ = ["SinkSet"]

_log = logging.getLogger("sse_batcher.sink")

# A runner that is behind writes several offered batches as one, up to these limits.
_MAX_WRITE_EVENTS = 10_000
_MAX_WRITE_BYTES = 8 * 2**20
_LOG_EVERY = 10.0  # seconds between repeated warnings about the same sink


@dataclass(slots=True)
class _Chunk:
    """One offered batch (or what is left of it after shedding) waiting for a sink."""

    events: list[StoredEvent]
    nbytes: int
    offered_at: float
    errors_only: bool = False


class _Runner:
    """One sink's buffer, writer task and counters. Lives on the event loop thread."""

    def __init__(self, sink: Sink, retry_initial: float, retry_max: float) -> None:
        self.sink = sink
        self.name = sink.name
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._queue: deque[_Chunk] = deque()
        self._stripped = 0  # leading chunks of the queue already reduced to errors only
        self._queued_bytes = 0
        self._queued_events = 0
        self._inflight: list[_Chunk] = []
        self._inflight_bytes = 0
        self._inflight_events = 0
        self._abandon = anyio.Event()
        self._wakeup = anyio.Event()
        self.closing = False
        self.done = anyio.Event()
        self._latencies: deque[float] = deque(maxlen=4096)
        self._last_warning = -_LOG_EVERY
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "received",
                "written",
                "batches_written",
                "retries",
                "failures",
                "dropped_overflow",
                "dropped_shutdown",
                "dropped_closed",
            ),
            0,
        )
        self.last_error: str | None = None

    @property
    def buffered_bytes(self) -> int:
        return self._queued_bytes + self._inflight_bytes

    @property
    def buffered_events(self) -> int:
        return self._queued_events + self._inflight_events

    def put(self, events: list[StoredEvent], nbytes: int, now: float) -> None:
        self._queue.append(_Chunk(events, nbytes, now))
        self._queued_bytes += nbytes
        self._queued_events += len(events)
        self.counters["received"] += len(events)
        self._wakeup.set()

    def shed(self, need: int) -> int:
        """Free at least ``need`` bytes if possible, oldest first; errors go last.

        Pass 1 strips non-error events from queued batches, pass 2 drops queued
        batches, pass 3 gives up the batch being retried (after its current attempt).
        """
        freed = 0
        dropped = 0
        while freed < need and self._stripped < len(self._queue):
            chunk = self._queue[self._stripped]
            keep = [e for e in chunk.events if is_error_event(e.event)]
            kept_bytes = sum(event_nbytes(e) for e in keep)
            freed += chunk.nbytes - kept_bytes
            dropped += len(chunk.events) - len(keep)
            self._queued_bytes -= chunk.nbytes - kept_bytes
            self._queued_events -= len(chunk.events) - len(keep)
            chunk.events, chunk.nbytes, chunk.errors_only = keep, kept_bytes, True
            self._stripped += 1
        while freed < need and self._queue:
            chunk = self._queue.popleft()
            if chunk.errors_only:
                self._stripped -= 1
            freed += chunk.nbytes
            dropped += len(chunk.events)
            self._queued_bytes -= chunk.nbytes
            self._queued_events -= len(chunk.events)
        if freed < need and self._inflight_bytes and not self._abandon.is_set():
            freed += self._inflight_bytes
            dropped += self._inflight_events
            self._abandon.set()
            self._inflight_bytes = self._inflight_events = 0
        if dropped:
            self.counters["dropped_overflow"] += dropped
            self._warn(
                "sink %r is behind and over the memory budget: dropped %d buffered events "
                "(dropped_overflow=%d so far; the journal still has them)",
                self.name,
                dropped,
                self.counters["dropped_overflow"],
            )
        return freed

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _LOG_EVERY:
            self._last_warning = now
            _log.warning(message, *args)

    def _take(self) -> list[StoredEvent]:
        """Move the oldest queued batches (coalesced up to the limits) in flight."""
        taken: list[_Chunk] = []
        count = nbytes = 0
        while self._queue and (
            not taken or count + len(self._queue[0].events) <= _MAX_WRITE_EVENTS
        ):
            if taken and nbytes + self._queue[0].nbytes > _MAX_WRITE_BYTES:
                break
            chunk = self._queue.popleft()
            if chunk.errors_only:
                self._stripped -= 1
            taken.append(chunk)
            count += len(chunk.events)
            nbytes += chunk.nbytes
        self._queued_bytes -= nbytes
        self._queued_events -= count
        self._inflight, self._inflight_bytes, self._inflight_events = taken, nbytes, count
        self._abandon = anyio.Event()
        if len(taken) == 1:
            return taken[0].events
        return [event for chunk in taken for event in chunk.events]

    def drop_all(self, reason: str) -> int:
        """Count everything still buffered as dropped (shutdown)."""
        lost = self.buffered_events
        self.counters[f"dropped_{reason}"] += lost
        self._queue.clear()
        self._stripped = self._queued_bytes = self._queued_events = 0
        self._inflight, self._inflight_bytes, self._inflight_events = [], 0, 0
        return lost

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                if not self._queue:
                    if self.closing:
                        return
                    await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    continue
                await self._write_with_retry(self._take())
        finally:
            self.done.set()

    async def _write_with_retry(self, events: list[StoredEvent]) -> None:
        attempt = 0
        while True:
            if not events:  # everything was shed while queued
                break
            try:
                await self.sink.write(events)
            except Exception as exc:  # any sink failure is retried; cancellation is not caught
                self.counters["failures"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                self._warn("sink %r write failed (will retry): %s", self.name, self.last_error)
                if self._abandon.is_set():
                    break
                delay = backoff_delay(attempt, initial=self._retry_initial, maximum=self._retry_max)
                attempt += 1
                with anyio.move_on_after(delay):
                    await self._abandon.wait()
                if self._abandon.is_set():
                    break
                self.counters["retries"] += 1
                continue
            if self._abandon.is_set():
                # Given up while this attempt was under way, yet it succeeded after all.
                self.counters["dropped_overflow"] -= len(events)
            now = time.monotonic()
            self.counters["written"] += len(events)
            self.counters["batches_written"] += 1
            self._latencies.extend(now - chunk.offered_at for chunk in self._inflight)
            self.last_error = None
            break
        self._inflight, self._inflight_bytes, self._inflight_events = [], 0, 0

    def stats(self) -> dict[str, Any]:
        lat = sorted(self._latencies)
        result: dict[str, Any] = dict(self.counters)
        result["buffered_events"] = self.buffered_events
        result["buffered_bytes"] = self.buffered_bytes
        result["healthy"] = self.last_error is None
        result["last_error"] = self.last_error
        result["latency_p99_ms"] = lat[int(0.99 * (len(lat) - 1))] * 1000 if lat else 0.0
        result["latency_max_ms"] = lat[-1] * 1000 if lat else 0.0
        try:
            own = self.sink.stats()
        except Exception as exc:  # a broken stats() must not break /stats
            own = {"stats_error": repr(exc)}
        result.update({f"sink_{key}": value for key, value in own.items()})
        return result


class SinkSet(Resource):
    """Feeds every sink its own copy of each stored batch, without ever blocking.

    Use as ``async with SinkSet(sinks) as sink_set:``; entering opens each sink (its
    ``async with``) and starts one writer task per sink; leaving drains the buffers
    for at most ``drain_timeout`` seconds, then closes the sinks.

    Only durable events (with an id) reach sinks; stream-only events are skipped.

    Args:
        sinks: the sinks; their names must be unique.
        max_buffer_bytes: memory budget shared by all sink buffers (approximate,
            see :func:`event_nbytes`). Over it, the sink holding the most bytes sheds
            its oldest buffered events, non-error events first.
        drain_timeout: seconds ``__aexit__`` waits for the buffers to be written.
        retry_initial: first retry delay after a failed write, in seconds.
        retry_max: the retry delay doubles up to this many seconds (plus jitter).
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        max_buffer_bytes: int = 64 * 2**20,
        drain_timeout: float = 10.0,
        retry_initial: float = 0.1,
        retry_max: float = 30.0,
    ) -> None:
        names = [sink.name for sink in sinks]
        if len(set(names)) != len(names):
            raise ConfigError(f"sink names must be unique, got {names}")
        if max_buffer_bytes <= 0 or drain_timeout < 0 or retry_initial <= 0:
            raise ConfigError("max_buffer_bytes and retry_initial must be > 0, drain_timeout >= 0")
        if retry_max < retry_initial:
            raise ConfigError("retry_max must be >= retry_initial")
        self._runners = [_Runner(sink, retry_initial, retry_max) for sink in sinks]
        self._max_bytes = max_buffer_bytes
        self._drain_timeout = drain_timeout
        self._accepting = True

    @property
    def sinks(self) -> list[Sink]:
        """The sinks, in the order given."""
        return [runner.sink for runner in self._runners]

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        # The sinks are closed (stack exit) only after the runners' task group ended.
        async with AsyncExitStack() as stack:
            for runner in self._runners:
                await stack.enter_async_context(runner.sink)
            async with anyio.create_task_group() as tg:
                for runner in self._runners:
                    # Runners only set an event before started(): this cannot fail.
                    await tg.start(runner.run)
                try:
                    yield
                finally:
                    self._accepting = False  # offers from now on count as dropped_closed
                    await self._drain()
                    tg.cancel_scope.cancel()
            # Not inside a shielding scope: a sink may own a task group, which must be
            # exited at the cancel-scope depth it was entered at. Sinks shield their own
            # cleanup (ArchiveSink closes its files under a shield).

    async def _drain(self) -> None:
        for runner in self._runners:
            runner.closing = True
            runner.wake()
        with anyio.move_on_after(self._drain_timeout, shield=True):
            for runner in self._runners:
                await runner.done.wait()
        for runner in self._runners:
            lost = runner.drop_all("shutdown")
            if lost:
                _log.warning(
                    "sink %r: %d events not written within drain_timeout=%ss "
                    "(the journal has them)",
                    runner.name,
                    lost,
                    self._drain_timeout,
                )

    def offer(self, events: Sequence[StoredEvent]) -> None:
        """Hand one appended batch to every sink. Never blocks, never raises.

        Call it on the event loop thread, in journal order.

        Args:
            events: the batch as the journal stored it.
        """
        try:
            self._offer(events)
        except Exception:  # the batcher's write path must never fail because of a sink
            _log.exception("SinkSet.offer failed; batch not passed to sinks")

    def _offer(self, events: Sequence[StoredEvent]) -> None:
        durable = [event for event in events if event.id is not None]
        if not durable:
            return
        if not (self.is_open and self._accepting):
            for runner in self._runners:
                runner.counters["dropped_closed"] += len(durable)
            return
        nbytes = sum(event_nbytes(event) for event in durable)
        now = time.monotonic()
        for runner in self._runners:
            # The list is shared read-only between runners; shedding replaces it.
            runner.put(durable, nbytes, now)
        total = sum(runner.buffered_bytes for runner in self._runners)
        while total > self._max_bytes:
            laggard = max(self._runners, key=lambda runner: runner.buffered_bytes)
            freed = laggard.shed(total - self._max_bytes)
            if freed <= 0:
                break
            total -= freed

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-sink counters, keyed by sink name (flat dicts of numbers and strings).

        Keys: received, written, batches_written, retries, failures, dropped_overflow,
        dropped_shutdown, dropped_closed, buffered_events, buffered_bytes, healthy,
        last_error, latency_p99_ms / latency_max_ms (offer to write complete, recent
        batches), and the sink's own counters prefixed ``sink_``.
        """
        return {runner.name: runner.stats() for runner in self._runners}
