"""``SSEBroadcasterMixin``: gives a worker class ``emit``/``aemit`` into a batcher.

A worker is anything that produces events: a thread, an anyio task, an object
whose methods run on either. Mixing this class in gives it a name (its event
source), a handle on the batcher, and two ways to emit:

* :meth:`SSEBroadcasterMixin.emit` is synchronous, safe from any thread (with or
  without an event loop of its own) and never blocks: the batcher only queues
  the event. When the queue is full or the batcher has stopped the event is
  counted and logged, not raised, so a burst of progress events can never crash
  a job. A worker that would rather know passes ``strict_emit=True``.
* :meth:`SSEBroadcasterMixin.aemit` is for coroutines running on the batcher's own
  event loop: it waits for room when the batcher's overflow policy is ``block``.

The per-worker batching switch lives in the batcher (``PATCH /workers/{name}``
flips it at runtime), so the mixin reads it from there every time and never
keeps a copy.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sse_batcher._exceptions import BatcherClosed, QueueFull
from sse_batcher.batching._events import DEFAULT_CHANNEL, check_channel, check_name

__all__ = ["EmitStats", "EventBatcher", "SSEBroadcasterMixin"]

logger = logging.getLogger("sse_batcher.mixin")

# A worker that keeps emitting into a full queue would otherwise log once per event.
_DROP_LOG_INTERVAL = 5.0


@runtime_checkable
class EventBatcher(Protocol):
    """What a worker needs from a batcher (``SSEEventBatcher`` satisfies it)."""

    def emit(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str,
        uid: str | None = None,
        ts: float | None = None,
        channel: str = ...,
    ) -> None: ...

    async def aemit(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str,
        uid: str | None = None,
        ts: float | None = None,
        channel: str = ...,
    ) -> None: ...

    def set_batching(self, source: str, enabled: bool) -> None: ...

    def batching_enabled(self, source: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class EmitStats:
    """What one worker emitted.

    Attributes:
        emitted: events the batcher accepted.
        dropped_full: events refused because the pending queue was full.
        dropped_closed: events emitted while the batcher was not running.
    """

    emitted: int
    dropped_full: int
    dropped_closed: int

    @property
    def dropped(self) -> int:
        """Every event this worker emitted that the batcher did not accept."""
        return self.dropped_full + self.dropped_closed


def _snake_case(name: str) -> str:
    # "ThumbnailWorker" -> "thumbnail_worker", "HTTPPoller" -> "http_poller"
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


class SSEBroadcasterMixin:
    """Mix into a worker class to let it emit events into an ``SSEEventBatcher``.

    The worker's name is the source of every event it emits: the ``worker_name``
    constructor argument, else a ``worker_name`` class attribute, else the class
    name in snake_case (``ThumbnailWorker`` -> ``thumbnail_worker``).

    ``__init__`` is cooperative: it takes its own keyword arguments and passes the
    rest on with ``super().__init__(*args, **kwargs)``, so the mixin goes first in
    the bases of an existing worker class::

        class ThumbnailWorker(SSEBroadcasterMixin, BaseWorker):
            def process(self, job):
                self.emit("JOB_STARTED", {"job_id": job.id, "camera_id": job.camera})

        worker = ThumbnailWorker(batcher=batcher, use_batching=False, poll_interval=2)

    Args:
        batcher: where events go (an ``SSEEventBatcher`` or anything with the
            same ``emit``/``aemit``/``set_batching``/``batching_enabled``).
        worker_name: the event source; overrides the class attribute.
        channel: the channel of this worker's events (``emit(..., channel=)``
            overrides it per event); default ``"default"``.
        use_batching: ``False`` sends this worker's events one by one (still
            persisted and streamed), ``True`` turns batching back on, ``None``
            (default) leaves the batcher's current setting alone.
        strict_emit: raise ``QueueFull``/``BatcherClosed`` from :meth:`emit` and
            :meth:`aemit` instead of counting and logging the drop.
    """

    worker_name: str
    """The event source. Subclasses may set it as a class attribute; the
    constructor's ``worker_name`` argument wins over it."""

    def __init__(
        self,
        *args: Any,
        batcher: EventBatcher,
        worker_name: str | None = None,
        use_batching: bool | None = None,
        strict_emit: bool = False,
        channel: str = DEFAULT_CHANNEL,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        name = (
            worker_name
            or getattr(type(self), "worker_name", None)
            or _snake_case(type(self).__name__)
        )
        self.worker_name = check_name("source", name)
        self.channel = check_channel(channel)
        self.batcher = batcher
        self.strict_emit = strict_emit
        self._emit_lock = threading.Lock()
        self._emitted = 0
        self._dropped_full = 0
        self._dropped_closed = 0
        self._last_drop_log = -_DROP_LOG_INTERVAL
        if use_batching is not None:
            batcher.set_batching(self.worker_name, use_batching)

    @property
    def use_batching(self) -> bool:
        """Whether the batcher merges this worker's events (read live from the batcher)."""
        return self.batcher.batching_enabled(self.worker_name)

    @use_batching.setter
    def use_batching(self, enabled: bool) -> None:
        self.batcher.set_batching(self.worker_name, enabled)

    def emit(
        self, type: str, data: Mapping[str, Any] | None = None, *, channel: str | None = None
    ) -> None:
        """Queue one event from this worker; safe from any thread, never blocks.

        Args:
            type: the event type, e.g. ``"JOB_STARTED"``.
            data: a JSON object; the batcher takes ownership, do not mutate it later.
            channel: where it goes (``user.42.jobs``); default the worker's channel.

        Raises:
            InvalidEvent: ``type`` is not a valid name (a bug in the caller).
            QueueFull: only with ``strict_emit=True``; otherwise counted and logged.
            BatcherClosed: only with ``strict_emit=True``; otherwise counted and logged.
        """
        try:
            self.batcher.emit(type, data, source=self.worker_name, channel=channel or self.channel)
        except (QueueFull, BatcherClosed) as exc:
            self._dropped(type, exc)
            return
        with self._emit_lock:
            self._emitted += 1

    async def aemit(
        self, type: str, data: Mapping[str, Any] | None = None, *, channel: str | None = None
    ) -> None:
        """Queue one event, waiting for room when the batcher's policy is ``block``.

        Call it from a task on the batcher's event loop. Code on any other thread or
        loop uses :meth:`emit`, which is thread-safe and never blocks.

        Args:
            type: the event type.
            data: a JSON object; the batcher takes ownership.
            channel: where it goes; default the worker's channel.

        Raises:
            InvalidEvent: ``type`` is not a valid name.
            QueueFull: only with ``strict_emit=True`` (block timeout or reject policy).
            BatcherClosed: only with ``strict_emit=True``.
        """
        try:
            await self.batcher.aemit(
                type, data, source=self.worker_name, channel=channel or self.channel
            )
        except (QueueFull, BatcherClosed) as exc:
            self._dropped(type, exc)
            return
        with self._emit_lock:
            self._emitted += 1

    def emit_stats(self) -> EmitStats:
        """Counts of what this worker emitted and what was dropped."""
        with self._emit_lock:
            return EmitStats(self._emitted, self._dropped_full, self._dropped_closed)

    def _dropped(self, type: str, exc: QueueFull | BatcherClosed) -> None:
        now = time.monotonic()
        with self._emit_lock:
            if isinstance(exc, QueueFull):
                self._dropped_full += 1
            else:
                self._dropped_closed += 1
            dropped = self._dropped_full + self._dropped_closed
            should_log = now - self._last_drop_log >= _DROP_LOG_INTERVAL
            if should_log:
                self._last_drop_log = now
        if self.strict_emit:
            raise exc
        if should_log:
            # The batcher is already overloaded: one line per interval, not one per event.
            logger.warning(
                "worker %s dropped %s event: %s (%d dropped so far)",
                self.worker_name,
                type,
                exc,
                dropped,
            )
