"""Publishing from another process with anyio: ``AsyncRemotePublisher``.

The anyio front end over :class:`~sse_batcher.publishing._core.PublisherCore`: the
sender is a task in the publisher's own task group, requests go through
``httpx.AsyncClient``, spool file work runs in worker threads.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Self

import anyio
import anyio.to_thread
import httpx
from anyio.abc import TaskGroup, TaskStatus

from sse_batcher._exceptions import BatcherClosed
from sse_batcher.publishing._core import PublisherCore
from sse_batcher.publishing._front_end import PublisherFrontEnd
from sse_batcher.publishing._model import IN_SENDER, Io, Post, Wait
from sse_batcher.publishing._publisher import (
    AT_EXIT_TIMEOUT,
    error_result,
    request_headers,
    response_result,
)

__all__ = ["AsyncRemotePublisher"]

logger = logging.getLogger("sse_batcher.publisher")


class AsyncRemotePublisher(
    anyio.AsyncContextManagerMixin, PublisherFrontEnd[httpx.AsyncBaseTransport]
):
    """The anyio twin of :class:`RemotePublisher`: same arguments, same semantics.

    The sender runs as a task in the publisher's own task group; spool file work
    runs in worker threads. Use it as ``async with``::

        async with AsyncRemotePublisher("http://127.0.0.1:8000", source="api") as pub:
            await pub.publish("USER_SIGNED_UP", {"user_id": 3})
            pub.publish_nowait("PAGE_VIEW", {"path": "/"})

    ``publish_nowait`` is meant for the event loop's thread; from other threads use
    a :class:`RemotePublisher` (a call from another thread still works, but is sent
    on the next ``flush_interval`` tick rather than at once).

    Args:
        transport: an ``httpx.AsyncBaseTransport``; the others as for ``RemotePublisher``.
    """

    def _setup(self) -> None:
        self._state = "unopened"
        self._loop_thread = -1
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._stopped = anyio.Event()
        self._spilling = False
        self._tg: TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._core = PublisherCore(
            self._config, on_wake=self._on_wake, on_progress=self._on_progress
        )

    def _in_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _on_wake(self) -> None:
        if self._in_loop():
            self._wake.set()

    def _on_progress(self) -> None:
        if self._in_loop():
            self._progress.set()
            self._progress = anyio.Event()

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Self]:
        if self._state != "unopened":
            raise BatcherClosed(f"this AsyncRemotePublisher is {self._state}; make a new one")
        self._state = "open"
        self._loop_thread = threading.get_ident()
        async with (
            httpx.AsyncClient(
                transport=self._transport,
                timeout=self._config.timeout,
                headers=request_headers(self._config.token),
            ) as client,
            anyio.create_task_group() as tg,
        ):
            self._client = client
            self._tg = tg
            await tg.start(self._run)
            try:
                yield self
            except BaseException:
                # The body failed or was cancelled: do not wait long for a server.
                with anyio.CancelScope(shield=True):
                    await self.aclose(timeout=min(self._config.timeout, AT_EXIT_TIMEOUT))
                raise
            with anyio.CancelScope(shield=True):
                await self.aclose()

    # ------------------------------------------------------------------ public API

    def publish_nowait(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
        ts: float | None = None,
        channel: str | None = None,
    ) -> None:
        """Queue one event without waiting; never raises (see ``RemotePublisher.publish``).

        Args:
            type: the event type.
            data: a JSON object.
            source: overrides the publisher's source for this event.
            ts: Unix time of the event; default now.
            channel: overrides the publisher's channel for this event.
        """
        verdict = self._offer(type, data, source, ts, channel)
        try:
            if verdict == "spill_now" or (verdict == "spill" and self._tg is None):
                # The background spill did not keep up (or there is none yet): keep
                # memory bounded at the price of one blocking write here.
                self._spill_here()
            elif verdict == "spill" and self._in_loop() and not self._spilling:
                assert self._tg is not None
                self._spilling = True
                self._tg.start_soon(self._spill)
        except Exception:
            logger.debug("publish failed", exc_info=True)

    async def publish(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
        ts: float | None = None,
        channel: str | None = None,
    ) -> None:
        """Queue one event; when memory is full, wait while it moves to the spool.

        Args:
            type: the event type.
            data: a JSON object.
            source: overrides the publisher's source for this event.
            ts: Unix time of the event; default now.
            channel: overrides the publisher's channel for this event.
        """
        verdict = self._offer(type, data, source, ts, channel)
        if verdict in ("spill", "spill_now") and not self._spilling:
            self._spilling = True
            await self._spill()

    def _offer(
        self,
        type: str,
        data: Mapping[str, Any] | None,
        source: str | None,
        ts: float | None,
        channel: str | None,
    ) -> str:
        """Hand one event, with a fresh uid, to the core; never raises (publishing
        must not fail a worker): an error is logged and reads as accepted."""
        try:
            return self._core.offer(type, data, source, ts, uuid.uuid4().hex, channel)
        except Exception:
            logger.debug("publish failed", exc_info=True)
            return "ok"

    async def flush(self) -> None:
        """Send everything published so far now; wait until sent, rejected or spooled.

        To bound the wait, wrap it: ``with anyio.move_on_after(5): await pub.flush()``.
        """
        target = self._core.request_flush()
        while not self._core.reached(target) and not self._stopped.is_set():
            progress = self._progress
            # Bounded wait: progress made on another thread sets no event here.
            with anyio.move_on_after(self._config.flush_interval):
                await progress.wait()

    # Not a cancellation timeout (ASYNC109): after it, what is left is spooled, which a
    # move_on_after around aclose() would cut short.
    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Send what is left (or spool it) and stop the sender; idempotent.

        Args:
            timeout: seconds to wait for delivery; after it, what is left is spooled
                (without a spool: dropped and counted).
        """
        if self._state == "closed":
            return
        if self._state == "unopened":
            self._state = "closed"
            await anyio.to_thread.run_sync(self._core.abandon)
            return
        self._state = "closing"
        self._core.request_close()
        with anyio.move_on_after(timeout):
            await self._stopped.wait()
        if not self._stopped.is_set() and self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()
        self._state = "closed"

    # ------------------------------------------------------------------ the sender task

    async def _spill(self) -> None:
        IN_SENDER.set(True)
        try:
            await anyio.to_thread.run_sync(self._core.spill)
        finally:
            self._spilling = False
            self._on_progress()

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        IN_SENDER.set(True)  # this task's context only (and the worker threads it starts)
        steps = self._core.run()
        value: Any = None
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                task_status.started()
                try:
                    while True:
                        try:
                            effect = steps.send(value)
                        except StopIteration:
                            break
                        value = await self._perform(effect)
                except Exception:
                    logger.exception(
                        "the publisher's sender failed; buffered events go to the spool"
                    )
        finally:
            steps.close()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._core.abandon)
                self._stopped.set()
                self._on_progress()

    async def _perform(self, effect: Wait | Post | Io) -> Any:
        if isinstance(effect, Post):
            try:
                response = await self._client.post(self._config.events_url, content=effect.body)
            except Exception as exc:  # httpx.HTTPError and anything a transport raises
                return error_result(exc)
            return response_result(response)
        if isinstance(effect, Io):
            if effect.inline and not self._spilling:
                # Memory only, and no spill holds the spool lock: no file, no blocking.
                value = effect.fn()
            else:
                value = await anyio.to_thread.run_sync(effect.fn)
            self._on_progress()
            return value
        wake = self._wake
        if not wake.is_set():
            with anyio.move_on_after(max(0.0, effect.deadline - time.monotonic())):
                await wake.wait()
        if self._wake is wake and wake.is_set():
            self._wake = anyio.Event()
        return None
