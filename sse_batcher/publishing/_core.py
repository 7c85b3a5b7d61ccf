"""The sans-I/O core shared by ``RemotePublisher`` (threads) and ``AsyncRemotePublisher`` (anyio).

::

    publish() ──► offer() ──► memory (FIFO, bounded) ──spill──► spool file (JSON lines)
                                      │                                │
                                      └────────── head batch ◄─────────┘  spool first
                                                      │
    run(): a generator that decides everything and yields effects; a front end
    performs each one and sends the result back in:
        Wait(deadline)   sleep until the deadline or a wake-up (new events, flush, close)
        Post(body)       one HTTP request  ──►  HttpResult(status, retry_after, body | error)
        Io(fn)           blocking local file work (spool), run in a worker thread by anyio

The queue itself (``spool ++ memory``, its locks and counters, and the blocking
spool-side steps) is the base class, :class:`~sse_batcher.publishing._queue.PublishQueue`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any, Literal

import orjson

from sse_batcher._backoff import backoff_delay
from sse_batcher.publishing._model import (
    IN_SENDER,
    RETRY_STATUSES,
    Effect,
    HttpResult,
    Io,
    Post,
    PublisherConfig,
    Retry,
    Wait,
    encode_event,
    event_type,
    retry_after_seconds,
    server_reason,
)
from sse_batcher.publishing._queue import PublishQueue

__all__ = ["PublisherCore"]

logger = logging.getLogger("sse_batcher.publisher")

_BASE_BACKOFF = 0.25
_REPROBE_AFTER = 300.0  # seconds in single-event mode before trying the batch route again


class PublisherCore(PublishQueue):
    """Everything both publishers decide: batching, retries, fallback, spool, stats.

    Args:
        config: the settings.
        on_wake: called (with the lock held) when the sender should re-evaluate.
        on_progress: called (with the lock held) when events left memory (for flush waiters).
        clock: monotonic seconds.
        rng: uniform [0, 1) numbers, for the backoff's jitter.
    """

    def __init__(
        self,
        config: PublisherConfig,
        *,
        on_wake: Callable[[], None],
        on_progress: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(config, on_progress=on_progress)
        self._on_wake = on_wake
        self._clock = clock
        self._rng = rng
        self._source = config.default_source
        self._channel = config.channel
        self._flush_target = 0
        self.closing = False
        self._down_since: float | None = None
        self._single_since: float | None = None
        self._warned_fallback = False
        self._warned_auth = False  # 401/403 logged at ERROR once (again after a success)

    # ---------------------------------------------------------------- front-end API

    def offer(
        self,
        type: str,
        data: Mapping[str, Any] | None,
        source: str | None,
        ts: float | None,
        uid: str,
        channel: str | None = None,
    ) -> Literal["ok", "spill", "spill_now", "dropped"]:
        """Encode and buffer one event; never raises.

        Returns "spill" when memory reached ``max_buffer_events`` (move it to the spool
        soon), "spill_now" at twice that (a spill in the background did not keep up:
        spill before returning), "dropped" when the event was not taken.
        """
        if IN_SENDER.get():
            return "dropped"  # the publisher's own logging: see in_publisher_context()
        try:
            line = encode_event(
                type,
                data,
                source or self._source,
                time.time() if ts is None else float(ts),
                uid,
                channel or self._channel,
            )
        except Exception as exc:  # anything a caller passes must not raise (logging handlers)
            with self.lock:
                self._reject(1, f"{type!s:.60}: invalid locally: {exc}")
            return "dropped"
        config = self.config
        with self.lock:
            if self.closed:
                self._counts["dropped"] += 1
                return "dropped"
            size = len(self._memory)
            spool_ok = self._spool is not None and not self._spool_failed
            if size >= config.max_buffer_events and not spool_ok:
                self._counts["dropped"] += 1
                return "dropped"
            seq = next(self._seq)
            self._last_seq = seq
            self._memory.append((seq, self._clock(), line))
            size += 1
            if size == 1 or size == config.max_batch_size:
                self._on_wake()
            if size < config.max_buffer_events:
                return "ok"
            return "spill_now" if size >= 2 * config.max_buffer_events else "spill"

    def request_flush(self) -> int:
        """Ask for everything buffered so far to be sent now; the seq to wait for."""
        with self.lock:
            self._flush_target = max(self._flush_target, self._last_seq)
            self._on_wake()
            return self._last_seq

    def reached(self, target: int) -> bool:
        """True once every event up to ``target`` was sent, rejected, dropped or spooled."""
        return self._left_seq >= target

    def request_close(self) -> None:
        """Send (or spool) what is left, then let ``run()`` return."""
        with self.lock:
            self.closing = True
            self._on_wake()

    # ---------------------------------------------------------------- the sender

    def run(self) -> Generator[Effect, Any, None]:
        """The sender: yields effects until closed and drained (or spooled)."""
        if self._spool is not None:
            yield Io(self._open_spool)
        while True:
            with self.lock:
                now = self._clock()
                action = self._next_action(now)
            if action == "stop":
                return
            if isinstance(action, float):
                yield Wait(action)
                continue
            lines = yield self._io(self._peek)
            if lines:
                yield from self._deliver(lines)

    def _next_action(self, now: float) -> Literal["stop", "send"] | float:
        config = self.config
        pending = self._spool.pending if self._spool is not None else 0
        if self.closing and not self._memory and (pending == 0 or self._down_since is not None):
            return "stop"
        if pending:
            return "send"
        if not self._memory:
            return now + config.flush_interval  # a tick: also covers lost cross-thread wake-ups
        first_seq, first_time, _ = self._memory[0]
        if (
            len(self._memory) >= config.max_batch_size
            or self.closing
            or first_seq <= self._flush_target
            or now - first_time >= config.flush_interval
        ):
            return "send"
        return first_time + config.flush_interval

    def _deliver(self, lines: list[bytes]) -> Generator[Effect, Any, bool]:
        """Deliver the queue's first ``len(lines)`` events, which are ``lines``.

        Returns True when the sender must stop with them still queued (closing while
        the server is down): the rest of a split or fallback batch is then not sent,
        since "consume the head" would acknowledge the wrong events.
        """
        attempt = 0
        while True:
            single = self._single_mode()
            if single and len(lines) > 1:
                with self.lock:
                    self._counts["fallbacks"] += 1
                for line in lines:
                    if (yield from self._deliver([line])):
                        return True
                return False
            body = lines[0] if single else b'{"events":[' + b",".join(lines) + b"]}"
            result: HttpResult = yield Post(body)
            outcome = self._classify(result, lines, single)
            if outcome == "done":
                yield self._io(lambda: self._consume(len(lines)))
                return False
            if outcome == "fallback":
                continue
            if outcome == "split":
                half = len(lines) // 2
                if (yield from self._deliver(lines[:half])):
                    return True
                return (yield from self._deliver(lines[half:]))
            assert isinstance(outcome, Retry)
            attempt += 1
            verdict = yield from self._back_off(outcome, attempt, len(lines))
            if verdict == "dropped":
                return False
            if verdict == "stop":
                return True

    def _back_off(
        self, retry: Retry, attempt: int, count: int
    ) -> Generator[Effect, Any, Literal["retry", "dropped", "stop"]]:
        """Wait before the next attempt: "retry", "dropped" (given up) or "stop" (closing).

        Once the server has been unreachable for ``spool_after`` seconds, memory is
        spilled to the spool whenever its oldest event is ``flush_interval`` old (one
        fsync per interval, not per event); without a spool the batch is dropped.
        """
        config = self.config
        delay = backoff_delay(
            attempt - 1,
            initial=_BASE_BACKOFF,
            maximum=config.max_backoff,
            jitter=1.0,
            rng=self._rng,
        )
        if retry.retry_after is not None:
            delay = max(delay, retry.retry_after)
        with self.lock:
            now = self._clock()
            if self._down_since is None:
                self._down_since = now
            self._last_error = retry.reason
            self._counts["retries"] += 1
        deadline = now + delay
        while True:
            with self.lock:
                now = self._clock()
                down_for = now - (self._down_since or now)
                overdue = config.spool_after is not None and down_for >= config.spool_after
                spool_ok = self._spool is not None and not self._spool_failed
                pending = self._spool.pending if self._spool is not None else 0
                wake_at = deadline
                spill = False
                if overdue and not spool_ok:
                    reason = f"server unreachable for {down_for:.1f} s: {retry.reason}"
                    self._counts["dropped"] += count
                    self._last_error = reason
                elif overdue and self._memory:
                    first_seq, first_time, _ = self._memory[0]
                    spill = (
                        self.closing
                        or first_seq <= self._flush_target
                        or now - first_time >= config.flush_interval
                    )
                    wake_at = min(deadline, first_time + config.flush_interval)
                stop = self.closing and not self._memory and pending > 0 and overdue
            if overdue and not spool_ok:
                yield self._io(lambda: self._consume(count))
                return "dropped"
            if spill:
                yield Io(self.spill)
                continue
            if stop:
                return "stop"  # closing: the batch stays in the spool for the next process
            if now >= deadline:
                return "retry"
            yield Wait(wake_at)

    def _classify(
        self, result: HttpResult, lines: list[bytes], single: bool
    ) -> Literal["done", "fallback", "split"] | Retry:
        status = result.status
        with self.lock:
            self._counts["requests"] += 1
            if result.error is not None:
                return Retry(result.error)
            if 200 <= status < 300:
                self._down_since = None
                self._warned_auth = False
                self._accept(result, lines, single)
                return "done"
            if status in (404, 405) and not single:
                self._single_since = self._clock()
                if not self._warned_fallback:
                    self._warned_fallback = True
                    logger.warning(
                        "%s answered %d to a batch: sending one event per request from now on",
                        self.config.events_url,
                        status,
                    )
                return "fallback"
            if status == 413 and len(lines) > 1:
                return "split"
            if status in RETRY_STATUSES or status >= 500:
                return Retry(
                    server_reason(result), retry_after_seconds(result.retry_after, time.time())
                )
            # The server refused the request itself (400, 401, 403, 413 for one event, ...):
            # sending it again cannot help.
            self._down_since = None
            if status in (401, 403) and not self._warned_auth:
                # A wrong or missing token drops every event: say so once, loudly (the
                # rejected counter and reasons keep counting the rest).
                self._warned_auth = True
                logger.error(
                    "%s refused the events (%s): check the publisher's token; events are "
                    "dropped until the server accepts one (counted in stats().rejected)",
                    self.config.events_url,
                    server_reason(result),
                )
            self._reject(len(lines), f"{len(lines)} events: {server_reason(result)}")
            return "done"

    def _accept(self, result: HttpResult, lines: list[bytes], single: bool) -> None:
        rejected: list[Any] = []
        duplicates = 0
        try:
            parsed = orjson.loads(result.body) if result.body else None
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            if isinstance(parsed.get("rejected"), list):
                rejected = parsed["rejected"]
            if isinstance(parsed.get("duplicates"), int):
                duplicates = parsed["duplicates"]
        for entry in rejected:
            index = entry.get("index") if isinstance(entry, dict) else None
            error = entry.get("error") if isinstance(entry, dict) else entry
            kind = (
                event_type(lines[index])
                if isinstance(index, int) and 0 <= index < len(lines)
                else "?"
            )
            self._reject(1, f"{kind}: {error}")
        self._counts["sent"] += max(0, len(lines) - len(rejected))
        self._counts["duplicates"] += duplicates
        if not single:
            self._counts["batches"] += 1

    def _single_mode(self) -> bool:
        with self.lock:
            since = self._single_since
            if since is not None and self._clock() - since >= _REPROBE_AFTER:
                # The server may have been upgraded: try the batch route again.
                self._single_since = since = None
            return since is not None
