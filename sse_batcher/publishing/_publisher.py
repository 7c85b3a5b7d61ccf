"""Publishing from another process with threads: ``RemotePublisher``.

A thin front end over :class:`~sse_batcher.publishing._core.PublisherCore`, which
makes every decision (when to send, what to retry, when to spool, how to read the
server's answer) as a generator of effects; this module performs them with
``httpx.Client`` in one daemon thread. ``_async_publisher.py`` is its anyio twin.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from sse_batcher._exceptions import BatcherClosed
from sse_batcher.publishing._core import PublisherCore
from sse_batcher.publishing._front_end import PublisherFrontEnd
from sse_batcher.publishing._model import (
    IN_SENDER,
    HttpResult,
    Io,
    Post,
    Wait,
    in_publisher_context,
)

# The helpers are shared with _async_publisher.py.
__all__ = [
    "AT_EXIT_TIMEOUT",
    "RemotePublisher",
    "error_result",
    "request_headers",
    "response_result",
]

logger = logging.getLogger("sse_batcher.publisher")
_USER_AGENT = "sse-batcher-publisher/0.1"
AT_EXIT_TIMEOUT = 5.0


def request_headers(token: str | None) -> dict[str, str]:
    """Headers on every request: JSON, our user agent, the bearer token if any."""
    headers = {"content-type": "application/json", "user-agent": _USER_AGENT}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


def response_result(response: httpx.Response) -> HttpResult:
    """What the core needs from a response."""
    return HttpResult(
        status=response.status_code,
        body=response.content,
        retry_after=response.headers.get("retry-after"),
    )


def error_result(exc: BaseException) -> HttpResult:
    """A failed request (connect error, timeout, ...) as the core sees it."""
    return HttpResult(error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


class RemotePublisher(PublisherFrontEnd[httpx.BaseTransport]):
    """Send events to an sse_batcher server from another process, batched, over HTTP.

    Events are buffered and posted to ``POST {url}/events`` as one batch when
    ``max_batch_size`` are waiting or ``flush_interval`` has passed since the oldest
    one. Every event carries a fresh ``uid``, so a batch retried after a lost
    response is stored once. Network errors, timeouts, 429 and 5xx are retried in
    order, one request at a time, with exponential backoff and full jitter,
    honouring ``Retry-After``; a server that answers 404/405 to a batch gets one
    event per request. When the server stays unreachable for ``spool_after``
    seconds, buffered events go to a spool file (JSON lines, fsync'd) and are sent
    first, in order, once it answers again, also by the next process.

    ``publish()`` never blocks on the network and never raises, so it is safe in a
    logging handler; events it cannot take are counted in :meth:`stats`.

    ::

        with RemotePublisher("http://127.0.0.1:8000", source="nightly-export") as pub:
            pub.publish("EXPORT_STARTED", {"job_id": 7})

    Args:
        url: the server's base url (``http://host:8000``).
        token: bearer token, when the server requires one.
        source: the default event source; default ``<hostname>-<pid>``.
        channel: the default channel of its events; default the server's (``default``).
        max_batch_size: events per request.
        flush_interval: seconds an event may wait for a batch to fill.
        spool_after: seconds the server may stay unreachable before buffered events
            go to the spool (without a spool: are dropped, counted); None: never.
        spool: False keeps everything in memory (bounded by ``max_buffer_events``).
        spool_path: the spool file; default in the user's cache directory, named by
            url and source (for the default source, by url and host name, so a
            restarted process finds it).
        max_buffer_events: events kept in memory; beyond it they go to the spool
            (without a spool, new events are dropped and counted).
        timeout: seconds per HTTP request.
        max_backoff: the longest pause between retries (``Retry-After`` may ask for more).
        transport: an ``httpx.BaseTransport`` (tests, custom TLS or proxies).
    """

    def _setup(self) -> None:
        self._closed = False
        self._start()
        ref = weakref.ref(self)
        self._at_exit = lambda: _close_at_exit(ref)
        atexit.register(self._at_exit)
        if hasattr(os, "register_at_fork"):
            # A publisher made before a fork (Celery prefork) has no sender thread in
            # the child, and shares the parent's socket and spool lock: start afresh.
            os.register_at_fork(after_in_child=lambda: _restart_after_fork(ref))

    def _start(self) -> None:
        self._pid = os.getpid()
        self._woken = False
        self._abort = False
        self._done = False
        self._core = PublisherCore(self._config, on_wake=self._notify, on_progress=self._notify)
        self._cond = threading.Condition(self._core.lock)
        self._client = httpx.Client(
            transport=self._transport,
            timeout=self._config.timeout,
            headers=request_headers(self._config.token),
        )
        self._thread = threading.Thread(
            target=self._run, name=f"sse-batcher-publisher-{id(self):x}", daemon=True
        )
        self._thread.start()

    def _notify(self) -> None:  # called with the core's lock held
        self._woken = True
        self._cond.notify_all()

    # ------------------------------------------------------------------ public API

    def publish(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
        ts: float | None = None,
        channel: str | None = None,
    ) -> None:
        """Queue one event; returns at once and never raises.

        Invalid events (a bad name, data that is not a JSON object) are counted as
        rejected with the reason; events published after :meth:`close` as dropped.

        Args:
            type: the event type, e.g. ``JOB_STARTED``.
            data: a JSON object.
            source: overrides the publisher's source for this event.
            ts: Unix time of the event; default now.
            channel: overrides the publisher's channel for this event.
        """
        try:
            verdict = self._core.offer(type, data, source, ts, uuid.uuid4().hex, channel)
            if verdict in ("spill", "spill_now"):
                # Memory is at its bound: move it to the spool here, in the caller's
                # thread (one fsync per max_buffer_events events), so memory stays bounded
                # even while the sender waits on a slow request.
                self._spill_here()
        except Exception:  # never into a caller's logging call
            logger.debug("publish failed", exc_info=True)

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything published so far now; wait until it is sent, rejected or spooled.

        Args:
            timeout: seconds to wait at most; None waits as long as it takes.

        Returns:
            True when everything was handled, False on timeout.
        """
        if in_publisher_context():
            return False
        target = self._core.request_flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._core.reached(target) and not self._done:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(remaining)
        return self._core.reached(target)

    def close(self, timeout: float | None = None) -> None:
        """Send what is left (or spool it) and stop; idempotent.

        Args:
            timeout: seconds to wait for delivery; after it, what is left is spooled
                (without a spool: dropped and counted). A request in flight may
                still take up to the request ``timeout``.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        if threading.current_thread() is self._thread:
            return
        self._core.request_close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                self._abort = True
                self._cond.notify_all()
            self._thread.join()

    def __enter__(self) -> Self:
        if self._closed:
            raise BatcherClosed("this RemotePublisher is closed")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ the sender thread

    def _run(self) -> None:
        IN_SENDER.set(True)
        core = self._core
        steps = core.run()
        value: Any = None
        try:
            while not self._abort:
                try:
                    effect = steps.send(value)
                except StopIteration:
                    break
                value = self._perform(effect)
        except Exception:
            logger.exception("the publisher's sender failed; buffered events go to the spool")
        finally:
            steps.close()
            try:
                core.abandon()
            finally:
                self._client.close()
                with self._cond:
                    self._done = True
                    self._cond.notify_all()

    def _perform(self, effect: Wait | Post | Io) -> Any:
        if isinstance(effect, Post):
            try:
                return response_result(
                    self._client.post(self._config.events_url, content=effect.body)
                )
            except Exception as exc:  # httpx.HTTPError and anything a transport raises
                return error_result(exc)
        if isinstance(effect, Io):
            return effect.fn()
        with self._cond:
            if not self._woken and not self._abort:
                self._cond.wait(max(0.0, effect.deadline - time.monotonic()))
            self._woken = False
        return None


def _close_at_exit(ref: weakref.ref[RemotePublisher]) -> None:
    publisher = ref()
    if publisher is not None:
        publisher.close(timeout=AT_EXIT_TIMEOUT)


def _restart_after_fork(ref: weakref.ref[RemotePublisher]) -> None:
    publisher = ref()
    if publisher is not None and not publisher._closed and publisher._pid != os.getpid():
        publisher._start()
