"""``RedisJournal``: the journal on a Redis Stream, so several nodes serve every event.

Keys, all under one prefix (use a hash tag such as ``{sse_batcher}`` on Redis
Cluster so they share a slot, which MULTI and the epoch script need): the stream
``{prefix}:events``, its ``:epoch``, the ``:uids`` sorted set and the ``:live``
channel, described with the entry format in ``_redis_keys.py``.

Flow::

    node A: append ── MULTI [GET epoch, XADD NOMKSTREAM xN, ZADD uids, PUBLISH live] EXEC
                          │                                         │
    every node: run_tail ─┼─ XREAD BLOCK from the last id ──────────┼──► deliver (stream order)
                          └─ SUBSCRIBE live ────────────────────────┴──► deliver (as they come)
                             (the two readers, with reconnects: _redis_tail.py)

``append`` never calls listeners itself: the appending node hears its own batch
through the same ``XREAD`` as every other node, so one node and many take the
same path. Stream-only events have no position; they are interleaved with
stream entries best-effort, and a node that is reconnecting to Redis misses
the ones published meanwhile (they are never stored, by definition).

Epoch: a stream that disappears (``DEL``, ``FLUSHDB``, a Redis restart without
persistence) and is created again gets a new epoch, so ids from the old one get
``reset`` instead of being mistaken for positions in the new one. Appends use
``XADD NOMKSTREAM`` so they never recreate the stream behind the epoch's back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from redis.exceptions import ResponseError

from sse_batcher._exceptions import BatcherClosed, ConfigError, JournalUnavailable
from sse_batcher._lifecycle import Resource
from sse_batcher.batching._events import EncodedEvent, Position, StoredEvent
from sse_batcher.batching._journal import Resume, TailListener, format_event_id, parse_event_id
from sse_batcher.journals._counters import RedisCounters
from sse_batcher.journals.redis._epoch import StreamEpoch, retry_once
from sse_batcher.journals.redis._keys import (
    REDIS_ERRORS,
    Keys,
    close_client,
    drop_connections,
    new_client,
    queue_append,
    resume_at,
    stored_entry,
    stream_id,
    stream_position,
)
from sse_batcher.journals.redis._tail import RedisTail

__all__ = ["RedisJournal"]

logger = logging.getLogger("sse_batcher.redis")

_MAX_APPEND_ATTEMPTS = 3
_UID_RETENTION = 3600.0


class RedisJournal(Resource):
    """A :class:`~sse_batcher.batching._journal.Journal` on a Redis Stream, shared by many nodes.

    Args:
        url: Redis URL, e.g. ``redis://127.0.0.1:6379/0``.
        prefix: key prefix, so several deployments can share one Redis.
        maxlen: keep about this many entries (``XADD MAXLEN ~``); None: no cap.
        retention_seconds: drop entries older than this (``XTRIM MINID`` in the
            cleanup task); None: keep them. Uids are kept one hour, as in SQLite.
        block_ms: how long one ``XREAD BLOCK`` waits before looping.
        cleanup_interval: seconds between retention passes.
        clock: wall clock in seconds (tests inject one to age entries).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sse_batcher",
        maxlen: int | None = None,
        retention_seconds: float | None = 10 * 86400,
        block_ms: int = 1000,
        cleanup_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not prefix:
            raise ConfigError("prefix must not be empty")
        if maxlen is not None and maxlen < 1:
            raise ConfigError(f"maxlen must be at least 1, not {maxlen}")
        if retention_seconds is not None and not retention_seconds > 0:
            raise ConfigError(f"retention_seconds must be positive, not {retention_seconds}")
        if block_ms < 1:
            raise ConfigError(f"block_ms must be at least 1, not {block_ms}")
        if not cleanup_interval > 0:
            raise ConfigError(f"cleanup_interval must be positive, not {cleanup_interval}")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"not a Redis URL: {url[:60]!r}")
        self.url = url
        self.prefix = prefix
        self.maxlen = maxlen
        self.retention_seconds = retention_seconds
        self.block_ms = block_ms
        self.cleanup_interval = cleanup_interval
        self._clock = clock
        self._keys = Keys.under(prefix)
        self._client: aioredis.Redis | None = None
        self._closing = anyio.Event()
        self._tails = 0
        self._last_append_ms = 0.0
        self._counters = RedisCounters()
        self._epoch = StreamEpoch(
            url=url, keys=self._keys, client=self._open_client, counters=self._counters
        )
        self._tail = RedisTail(
            url=url,
            keys=self._keys,
            block_ms=block_ms,
            epoch=lambda: self.epoch,
            see_epoch=self._epoch.see,
            counters=self._counters,
        )

    # -- lifecycle ---------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        client = self._client = new_client(self.url)
        try:
            self._epoch.register(client)
            await self._epoch.ensure()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._cleanup_loop)
                yield
                self._closing.set()  # run_tail() callers return
                tg.cancel_scope.cancel()
        finally:
            self._client = None  # from here on, _open_client() refuses
            await close_client(client)

    def _open_client(self) -> aioredis.Redis:
        if self._client is None:  # not yet opened, or closing (the epoch check runs at start)
            raise BatcherClosed(
                f"RedisJournal is {self.lifecycle.value}; use `async with journal:`"
            )
        return self._client

    @property
    def epoch(self) -> str:
        """The stream's epoch, as last seen (it changes if the stream is recreated)."""
        self._open_client()
        assert self._epoch.value is not None
        return self._epoch.value

    # -- writing -----------------------------------------------------------------

    async def append(self, events: Sequence[EncodedEvent]) -> list[StoredEvent]:
        """Store the persisted events in one MULTI/EXEC, publish the stream-only ones.

        Tail listeners are not called here: every node, this one included, receives
        the batch from the stream through :meth:`run_tail`.

        Args:
            events: the batch, in order.

        Returns:
            The events in the same order, persisted ones with their stream ids.

        Raises:
            JournalUnavailable: Redis failed; nothing was stored or published.
        """
        client = self._open_client()
        self._counters.appends += 1
        if not events:
            return []
        persisted = [e for e in events if e.persist]
        live = [e for e in events if not e.persist]
        now = self._clock()
        uids = {uid: now for e in persisted for uid in e.uids}
        started = time.perf_counter()
        try:
            ids = await self._append_entries(client, persisted, uids, live)
        except REDIS_ERRORS as exc:
            # Not retried here: if the EXEC ran and only its reply was lost, sending it
            # again would store the batch twice. The batcher retries on fresh connections.
            self._counters.failures += 1
            await drop_connections(client)
            raise JournalUnavailable(f"Redis append failed: {exc}") from exc
        except JournalUnavailable:
            self._counters.failures += 1
            raise
        self._last_append_ms = (time.perf_counter() - started) * 1000.0
        self._counters.transactions += 1
        self._counters.rows_written += len(persisted)
        self._counters.uids_written += len(uids)
        self._counters.stream_only += len(live)
        epoch = self.epoch
        positions = iter(ids)
        stored: list[StoredEvent] = []
        for e in events:
            if e.persist:
                position = next(positions)
                event_id = format_event_id(epoch, position, two_part=True)
                stored.append(StoredEvent(event_id, position, e.event, e.data_json))
            else:
                stored.append(StoredEvent(None, None, e.event, e.data_json))
        return stored

    async def _append_entries(
        self,
        client: aioredis.Redis,
        persisted: list[EncodedEvent],
        uids: dict[str, float],
        live: list[EncodedEvent],
    ) -> list[Position]:
        for _ in range(_MAX_APPEND_ATTEMPTS):
            async with client.pipeline(transaction=True) as pipe:
                pipe.get(self._keys.epoch)
                queue_append(pipe, self._keys, persisted, uids, live, self.maxlen)
                results = await pipe.execute()
            ids = results[1 : 1 + len(persisted)]
            if all(i is not None for i in ids):
                self._epoch.see(results[0])
                return [stream_position(i) for i in ids]
            # The stream is gone (deleted, or Redis restarted empty): NOMKSTREAM made
            # every XADD a no-op. The uids and the live events did go through, so the
            # retry carries only the entries, into a stream created with a new epoch.
            logger.warning("Redis stream %s is missing; creating it", self._keys.stream)
            live = []
            await self._epoch.ensure()
        raise JournalUnavailable(f"Redis stream {self._keys.stream} keeps disappearing")

    # -- reading -----------------------------------------------------------------

    async def read_after(self, after: Position | None, limit: int) -> list[StoredEvent]:
        """Stored events with position > ``after`` (None: from the oldest), oldest first.

        Args:
            after: exclusive lower bound.
            limit: at most this many events.
        """
        if limit <= 0:
            return []
        start = "-" if after is None else "(" + stream_id(after)
        epoch, entries = await self._epoch.read(
            lambda pipe: pipe.xrange(self._keys.stream, start, "+", count=limit)
        )
        return [stored_entry(epoch, entry_id, fields) for entry_id, fields in entries]

    async def newest_id(self) -> str | None:
        """The id of the newest stored event, None when the stream is empty."""
        epoch, entries = await self._epoch.read(
            lambda pipe: pipe.xrevrange(self._keys.stream, count=1)
        )
        if not entries:
            return None
        newest: str = format_event_id(epoch, stream_position(entries[0][0]), two_part=True)
        return newest

    async def resume(self, cursor: str) -> Resume:
        """Decide where a subscriber holding ``cursor`` resumes.

        Args:
            cursor: a wire id (``E.ms-seq``), or a bare position (``ms-seq``, ``42``).

        Raises:
            InvalidCursor: the text is not an id.
        """
        cursor_epoch, position = parse_event_id(cursor, two_part=True)
        epoch, info = await self._epoch.read(lambda pipe: pipe.xinfo_stream(self._keys.stream))
        if isinstance(info, ResponseError):  # the stream vanished between the two reads
            info = {}
        return resume_at(cursor_epoch, position, epoch, info)

    async def recent_uids(self, within_seconds: float) -> set[str]:
        """Idempotency keys stored in the last ``within_seconds``."""
        since = self._clock() - within_seconds
        raw = await retry_once(
            self._open_client(),
            lambda client: client.zrangebyscore(self._keys.uids, since, "+inf"),
            "read",
        )
        return {uid.decode() if isinstance(uid, bytes) else str(uid) for uid in raw}

    async def ping(self) -> None:
        """Return when Redis answers; raise JournalUnavailable otherwise."""
        await retry_once(self._open_client(), lambda client: client.ping(), "ping")

    # -- tailing -----------------------------------------------------------------

    async def run_tail(
        self, deliver: TailListener, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Call ``deliver`` with every entry appended by any node, in stream order,
        and with stream-only events as they are published, until cancelled.

        ``task_status.started()`` is called once the newest id is recorded and the
        live channel is subscribed: everything appended after that is delivered.
        On connection loss both readers reconnect with backoff; the stream reader
        resumes from its last delivered id, so nothing stored is missed.
        """
        self._open_client()
        self._tails += 1
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self._tail.stream, deliver)
                await tg.start(self._tail.live, deliver)
                task_status.started()
                await self._closing.wait()
                tg.cancel_scope.cancel()
        finally:
            self._tails -= 1

    # -- retention ---------------------------------------------------------------

    async def cleanup(self) -> int:
        """One retention pass: drop entries older than ``retention_seconds`` and
        uids older than an hour (as SQLiteJournal does).

        Returns:
            How many stream entries were removed.
        """
        client = self._open_client()
        now = self._clock()
        try:
            async with client.pipeline(transaction=False) as pipe:
                if self.retention_seconds is not None:
                    # Entry ids carry Redis's clock, the cutoff ours: retention is as
                    # exact as the two agree.
                    cutoff_ms = max(0, math.floor((now - self.retention_seconds) * 1000))
                    pipe.execute_command("XTRIM", self._keys.stream, "MINID", f"{cutoff_ms}-0")
                pipe.zremrangebyscore(self._keys.uids, "-inf", f"({now - _UID_RETENTION!r}")
                *trimmed, expired = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._counters.cleanup_failures += 1
            raise JournalUnavailable(f"Redis cleanup failed: {exc}") from exc
        deleted = int(trimmed[0]) if trimmed else 0
        self._counters.cleanup_runs += 1
        self._counters.rows_deleted += deleted
        self._counters.uids_deleted += int(expired)
        return deleted

    async def _cleanup_loop(self) -> None:
        while True:
            await anyio.sleep(self.cleanup_interval)
            try:
                await self.cleanup()
            except JournalUnavailable as exc:
                logger.warning("retention pass skipped: %s", exc)

    def stats(self) -> dict[str, Any]:
        """Counters for ``/stats`` and ``/metrics`` (flat numbers)."""
        stats: dict[str, Any] = asdict(self._counters)
        stats["last_append_ms"] = round(self._last_append_ms, 3)
        stats["listeners"] = self._tails
        stats["open"] = 1 if self.is_open else 0
        return stats
