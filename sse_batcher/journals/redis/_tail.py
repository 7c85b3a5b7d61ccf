"""The two readers behind ``RedisJournal.run_tail``: the stream and the live channel.

::

    stream reader: XREAD BLOCK from the last delivered id (+ GET epoch) ──► deliver
    live reader:   SUBSCRIBE {prefix}:live ──────────────────────────────► deliver

Each has its own connection and, when it loses it, reconnects with exponential
backoff and jitter. The stream reader resumes from the last id it delivered, so
nothing stored is missed; the live reader misses what was published meanwhile
(stream-only events are never stored, by definition).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from sse_batcher._backoff import backoff_delay
from sse_batcher.batching._events import StoredEvent
from sse_batcher.batching._journal import TailListener
from sse_batcher.journals._counters import RedisCounters
from sse_batcher.journals.redis._keys import (
    REDIS_ERRORS,
    Keys,
    close_client,
    live_events,
    new_client,
    stored_entry,
)

__all__ = ["RedisTail"]

logger = logging.getLogger("sse_batcher.redis")

_TAIL_COUNT = 1000


class RedisTail:
    """The tail readers of one ``RedisJournal``.

    Args:
        url: the Redis URL.
        keys: the journal's keys.
        block_ms: how long one ``XREAD BLOCK`` waits before looping.
        epoch: the journal's epoch as last seen.
        see_epoch: tell the journal about an epoch read from Redis.
        counters: the journal's counters, updated in place.
    """

    def __init__(
        self,
        *,
        url: str,
        keys: Keys,
        block_ms: int,
        epoch: Callable[[], str],
        see_epoch: Callable[[bytes | None], object],
        counters: RedisCounters,
    ) -> None:
        self._url = url
        self._keys = keys
        self._block_ms = block_ms
        self._epoch = epoch
        self._see_epoch = see_epoch
        self._counters = counters

    def _deliver(self, deliver: TailListener, batch: list[StoredEvent]) -> None:
        try:
            deliver(batch)
        except Exception:  # the events are stored; one bad listener must not stop the tail
            self._counters.listener_errors += 1
            logger.exception("Redis tail listener %r failed", deliver)

    async def _backoff(self, attempt: int) -> None:
        await anyio.sleep(backoff_delay(attempt, initial=0.05, maximum=2.0))

    async def stream(
        self, deliver: TailListener, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver every entry appended from now on, in stream order, until cancelled.

        ``task_status.started()`` is called once the newest id is recorded.
        """
        keys = self._keys
        last_id: bytes | None = None
        epoch = self._epoch()
        attempt = 0
        started = False
        while True:
            # Its own connection: a blocked XREAD would stall appends sharing one.
            client = new_client(self._url, socket_timeout=self._block_ms / 1000 + 5.0)
            try:
                if last_id is None:
                    async with client.pipeline(transaction=True) as pipe:
                        pipe.get(keys.epoch)
                        pipe.xrevrange(keys.stream, count=1)
                        raw_epoch, newest = await pipe.execute()
                    epoch = epoch if raw_epoch is None else raw_epoch.decode()
                    last_id = newest[0][0] if newest else b"0-0"
                if not started:
                    started = True
                    task_status.started()
                while True:
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.xread({keys.stream: last_id}, count=_TAIL_COUNT, block=self._block_ms)
                        pipe.get(keys.epoch)
                        read, raw_epoch = await pipe.execute()
                    attempt = 0
                    seen = None if raw_epoch is None else raw_epoch.decode()
                    if seen is not None and seen != epoch:
                        # Stream recreated: read the new one from its start, with its
                        # epoch; what this XREAD returned is part of that re-read.
                        epoch = seen
                        self._see_epoch(raw_epoch)
                        last_id = b"0-0"
                        continue
                    if not read:
                        continue
                    entries = read[0][1]
                    batch = [stored_entry(epoch, i, f) for i, f in entries]
                    last_id = entries[-1][0]
                    self._counters.tail_batches += 1
                    self._counters.tail_delivered += len(batch)
                    self._deliver(deliver, batch)
            except REDIS_ERRORS as exc:
                self._counters.tail_reconnects += 1
                logger.warning("Redis tail lost its connection (%s); reconnecting", exc)
                await self._backoff(attempt)
                attempt += 1
            finally:
                await close_client(client)

    async def live(
        self, deliver: TailListener, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver stream-only events as they are published, until cancelled.

        ``task_status.started()`` is called once the channel is subscribed.
        """
        attempt = 0
        started = False
        while True:
            client = new_client(self._url, socket_timeout=None)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self._keys.channel)
                with anyio.fail_after(10):
                    while (await pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
                        pass
                if not started:
                    started = True
                    task_status.started()
                attempt = 0
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is None or message.get("type") != "message":
                        continue
                    batch = live_events(message["data"])
                    self._counters.live_received += len(batch)
                    self._deliver(deliver, batch)
            except (*REDIS_ERRORS, TimeoutError) as exc:
                self._counters.tail_reconnects += 1
                logger.warning("Redis live channel lost its connection (%s); reconnecting", exc)
                await self._backoff(attempt)
                attempt += 1
            finally:
                with anyio.move_on_after(2, shield=True):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
                await close_client(client)
