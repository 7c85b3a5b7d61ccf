"""``RedisJournal``: the journal on a Redis Stream, so several nodes serve every event.

Keys, all under one prefix (use a hash tag such as ``{sse_batcher}`` on Redis
Cluster so they share a slot, which MULTI and the epoch script need)::

    {prefix}:events   the stream; entry ids are the event ids, global across nodes
    {prefix}:epoch    created atomically with the stream (script below)
    {prefix}:uids     sorted set uid -> time stored, for de-duplication after restarts
    {prefix}:live     pub/sub channel for stream-only (persist=False) events

Flow::

    node A: append ── MULTI [GET epoch, XADD NOMKSTREAM xN, ZADD uids, PUBLISH live] EXEC
                          │                                         │
    every node: run_tail ─┼─ XREAD BLOCK from the last id ──────────┼──► deliver (stream order)
                          └─ SUBSCRIBE live ────────────────────────┴──► deliver (as they come)

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
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import orjson
import redis.asyncio as aioredis
from anyio.abc import TaskGroup, TaskStatus
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from ._events import EncodedEvent, Event, Position, StoredEvent
from ._exceptions import BatcherClosed, ConfigError, JournalUnavailable
from ._journal import Resume, TailListener, format_event_id, parse_event_id

__all__ = ["RedisJournal"]

logger = logging.getLogger("sse_batcher.redis")
_T = TypeVar("_T")

_REDIS_ERRORS = (RedisError, OSError)
_TAIL_COUNT = 1000
_MAX_APPEND_ATTEMPTS = 3
_UID_RETENTION = 3600.0

# Creates the stream empty (XGROUP ... MKSTREAM, then drop the group) together with a
# new epoch, or keeps the existing stream's epoch. Atomic, so nodes racing at start
# agree on one epoch. An empty XADD+XDEL would count as a deleted entry and make
# resume() report "trimmed" for a stream that never lost anything.
_ENSURE_STREAM = """
local created = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[2], '$', 'MKSTREAM')
  redis.call('XGROUP', 'DESTROY', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[1])
  created = 1
else
  redis.call('SET', KEYS[2], ARGV[1], 'NX')
end
return {redis.call('GET', KEYS[2]), created}
"""


class _State(Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def _stream_id(position: Position) -> str:
    return f"{position.major}-{position.minor}"


def _position(raw: bytes | str) -> Position:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, seq = text.split("-", 1)
    return Position(int(ms), int(seq))


class RedisJournal:
    """A :class:`~sse_batcher._journal.Journal` on a Redis Stream, shared by many nodes.

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
        self._stream_key = f"{prefix}:events"
        self._epoch_key = f"{prefix}:epoch"
        self._uids_key = f"{prefix}:uids"
        self._channel = f"{prefix}:live"
        self._state = _State.UNOPENED
        self._epoch: str | None = None
        self._client: aioredis.Redis | None = None
        self._ensure_script: Any = None
        self._task_group: TaskGroup | None = None
        self._closing = anyio.Event()
        self._tails = 0
        self._last_append_ms = 0.0
        self._counters: dict[str, int] = dict.fromkeys(
            (
                # The names SQLiteJournal uses, where they mean the same thing.
                "appends",
                "transactions",
                "rows_written",
                "uids_written",
                "stream_only",
                "failures",
                "rows_deleted",
                "uids_deleted",
                "cleanup_runs",
                "cleanup_failures",
                "listener_errors",
                # Redis only.
                "streams_created",
                "epoch_changes",
                "tail_delivered",
                "tail_batches",
                "tail_reconnects",
                "live_received",
            ),
            0,
        )

    # -- lifecycle ---------------------------------------------------------------

    def _new_client(self, *, socket_timeout: float | None = 5.0) -> aioredis.Redis:
        # No redis-py retries: re-sending an EXEC whose reply was lost could append a
        # batch twice. The batcher owns retries (with backoff and dead-lettering).
        return aioredis.Redis.from_url(
            self.url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
        )

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise BatcherClosed(f"RedisJournal cannot be opened when {self._state.value}")
        self._state = _State.OPEN
        self._client = self._new_client()
        try:
            self._ensure_script = self._client.register_script(_ENSURE_STREAM)
            await self._ensure_stream()
        except BaseException:
            self._state = _State.CLOSED
            await self._close_client(self._client)
            raise
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._cleanup_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state is not _State.OPEN:
            return
        self._state = _State.CLOSED
        self._closing.set()  # run_tail() callers return
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
        if self._client is not None:
            await self._close_client(self._client)

    @staticmethod
    async def _close_client(client: aioredis.Redis) -> None:
        with anyio.move_on_after(2, shield=True):
            await client.aclose()

    def _open_client(self) -> aioredis.Redis:
        if self._state is not _State.OPEN or self._client is None:
            raise BatcherClosed(f"RedisJournal is {self._state.value}; use `async with journal:`")
        return self._client

    async def _retry_once(self, call: Callable[[aioredis.Redis], Awaitable[_T]], what: str) -> _T:
        """Run an idempotent call; after a lost connection, retry it once on fresh ones.

        After Redis restarts, every pooled connection is dead and the first use of
        each fails: reads and pings try again so one stale socket is not an outage.
        """
        client = self._open_client()
        for attempt in range(2):
            try:
                return await call(client)
            except (RedisConnectionError, OSError) as exc:
                await self._drop_connections(client)
                if attempt:
                    raise JournalUnavailable(f"Redis {what} failed: {exc}") from exc
            except RedisError as exc:
                raise JournalUnavailable(f"Redis {what} failed: {exc}") from exc
        raise AssertionError("unreachable")

    @staticmethod
    async def _drop_connections(client: aioredis.Redis) -> None:
        with anyio.move_on_after(2, shield=True):
            await client.connection_pool.disconnect()

    @property
    def epoch(self) -> str:
        """The stream's epoch, as last seen (it changes if the stream is recreated)."""
        self._open_client()
        assert self._epoch is not None
        return self._epoch

    def _see_epoch(self, raw: bytes | None) -> str | None:
        if raw is None:
            return None
        epoch = raw.decode()
        if epoch != self._epoch:
            if self._epoch is not None:
                self._counters["epoch_changes"] += 1
                logger.warning("Redis stream %s has a new epoch %s", self._stream_key, epoch)
            self._epoch = epoch
        return epoch

    async def _ensure_stream(self) -> str:
        """Create the stream with a new epoch if it is missing; return the epoch."""
        client = self._open_client()
        try:
            raw_epoch, created = await self._ensure_script(
                keys=[self._stream_key, self._epoch_key],
                args=[secrets.token_hex(6), f"sse_batcher_init_{secrets.token_hex(4)}"],
                client=client,
            )
        except _REDIS_ERRORS as exc:
            raise JournalUnavailable(f"Redis at {self.url} is unavailable: {exc}") from exc
        if created:
            self._counters["streams_created"] += 1
        epoch = self._see_epoch(raw_epoch)
        assert epoch is not None
        return epoch

    # -- writing -----------------------------------------------------------------

    def _fields(self, encoded: EncodedEvent) -> dict[str, bytes | str]:
        event = encoded.event
        fields: dict[str, bytes | str] = {
            "type": event.type,
            "source": event.source,
            "ts": repr(event.ts),
            "data": encoded.data_json,
        }
        if event.uid is not None:
            fields["uid"] = event.uid
        if encoded.uids:
            fields["uids"] = orjson.dumps(encoded.uids)
        return fields

    @staticmethod
    def _live_message(events: Sequence[EncodedEvent]) -> bytes:
        return orjson.dumps(
            [
                {
                    "type": e.event.type,
                    "source": e.event.source,
                    "ts": e.event.ts,
                    "uid": e.event.uid,
                    "data": orjson.Fragment(e.data_json),
                }
                for e in events
            ]
        )

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
        self._counters["appends"] += 1
        if not events:
            return []
        persisted = [e for e in events if e.persist]
        live = [e for e in events if not e.persist]
        now = self._clock()
        uids = {uid: now for e in persisted for uid in e.uids}
        started = time.perf_counter()
        try:
            ids = await self._append_entries(client, persisted, uids, live)
        except _REDIS_ERRORS as exc:
            # Not retried here: if the EXEC ran and only its reply was lost, sending it
            # again would store the batch twice. The batcher retries on fresh connections.
            self._counters["failures"] += 1
            await self._drop_connections(client)
            raise JournalUnavailable(f"Redis append failed: {exc}") from exc
        except JournalUnavailable:
            self._counters["failures"] += 1
            raise
        self._last_append_ms = (time.perf_counter() - started) * 1000.0
        self._counters["transactions"] += 1
        self._counters["rows_written"] += len(persisted)
        self._counters["uids_written"] += len(uids)
        self._counters["stream_only"] += len(live)
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
                pipe.get(self._epoch_key)
                for e in persisted:
                    pipe.xadd(
                        self._stream_key,
                        self._fields(e),  # type: ignore[arg-type]
                        maxlen=self.maxlen,
                        approximate=True,
                        nomkstream=True,
                    )
                if uids:
                    pipe.zadd(self._uids_key, uids)  # type: ignore[arg-type,unused-ignore]
                if live:
                    pipe.publish(self._channel, self._live_message(live))
                results = await pipe.execute()
            ids = results[1 : 1 + len(persisted)]
            if all(i is not None for i in ids):
                self._see_epoch(results[0])
                return [_position(i) for i in ids]
            # The stream is gone (deleted, or Redis restarted empty): NOMKSTREAM made
            # every XADD a no-op. The uids and the live events did go through, so the
            # retry carries only the entries, into a stream created with a new epoch.
            logger.warning("Redis stream %s is missing; creating it", self._stream_key)
            live = []
            await self._ensure_stream()
        raise JournalUnavailable(f"Redis stream {self._stream_key} keeps disappearing")

    # -- reading -----------------------------------------------------------------

    def _stored(self, epoch: str, entry_id: bytes, fields: dict[bytes, bytes]) -> StoredEvent:
        position = _position(entry_id)
        data_json = fields[b"data"]
        uid = fields.get(b"uid")
        event = Event(
            type=fields[b"type"].decode(),
            source=fields[b"source"].decode(),
            data=orjson.loads(data_json),
            ts=float(fields[b"ts"]),
            uid=None if uid is None else uid.decode(),
        )
        return StoredEvent(
            format_event_id(epoch, position, two_part=True), position, event, data_json
        )

    async def _read(self, command: Callable[[Any], object]) -> tuple[str, Any]:
        """Run one read command in MULTI with GET epoch, so ids get the right epoch."""

        async def call(client: aioredis.Redis) -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                pipe.get(self._epoch_key)
                command(pipe)
                return await pipe.execute(raise_on_error=False)

        for _ in range(2):
            raw_epoch, result = await self._retry_once(call, "read")
            epoch = self._see_epoch(raw_epoch)
            if epoch is not None:
                if isinstance(result, ResponseError) and "no such key" not in str(result):
                    raise JournalUnavailable(f"Redis read failed: {result}")
                return epoch, result
            # Redis lost the stream and nobody has appended since: create it now so a
            # cursor from the lost stream is told "epoch" rather than served.
            await self._ensure_stream()
        raise JournalUnavailable(f"Redis stream {self._stream_key} keeps disappearing")

    async def read_after(self, after: Position | None, limit: int) -> list[StoredEvent]:
        """Stored events with position > ``after`` (None: from the oldest), oldest first.

        Args:
            after: exclusive lower bound.
            limit: at most this many events.
        """
        if limit <= 0:
            return []
        start = "-" if after is None else "(" + _stream_id(after)
        epoch, entries = await self._read(
            lambda pipe: pipe.xrange(self._stream_key, start, "+", count=limit)
        )
        return [self._stored(epoch, entry_id, fields) for entry_id, fields in entries]

    async def newest_id(self) -> str | None:
        """The id of the newest stored event, None when the stream is empty."""
        epoch, entries = await self._read(lambda pipe: pipe.xrevrange(self._stream_key, count=1))
        if not entries:
            return None
        newest: str = format_event_id(epoch, _position(entries[0][0]), two_part=True)
        return newest

    async def resume(self, cursor: str) -> Resume:
        """Decide where a subscriber holding ``cursor`` resumes.

        Args:
            cursor: a wire id (``E.ms-seq``), or a bare position (``ms-seq``, ``42``).

        Raises:
            InvalidCursor: the text is not an id.
        """
        cursor_epoch, position = parse_event_id(cursor, two_part=True)
        epoch, info = await self._read(lambda pipe: pipe.xinfo_stream(self._stream_key))
        if isinstance(info, ResponseError):  # the stream vanished between the two reads
            info = {}
        first = info.get("first-entry")
        oldest = None if not first else format_event_id(epoch, _position(first[0]), two_part=True)
        if cursor_epoch is not None and cursor_epoch != epoch:
            return Resume(None, "epoch", oldest)
        last = _position(info.get("last-generated-id", b"0-0"))
        if position > last:
            return Resume(None, "future", oldest)
        length = int(info.get("length", 0))
        removed = int(info.get("entries-added", 0)) - length
        max_deleted = _position(info.get("max-deleted-entry-id", b"0-0"))
        # Trimming removes the oldest entries, so something after the cursor is gone
        # iff the cursor is older than the first kept entry (or than the last id, once
        # everything went). A cursor equal to the newest removed entry is reported as
        # trimmed too: the stream no longer tells which entry that was.
        if (
            max_deleted > position
            or (removed > 0 and first and position < _position(first[0]))
            or (removed > 0 and not first and position < last)
        ):
            return Resume(None, "trimmed", oldest)
        return Resume(position, None, oldest)

    async def recent_uids(self, within_seconds: float) -> set[str]:
        """Idempotency keys stored in the last ``within_seconds``."""
        since = self._clock() - within_seconds
        raw = await self._retry_once(
            lambda client: client.zrangebyscore(self._uids_key, since, "+inf"), "read"
        )
        return {uid.decode() if isinstance(uid, bytes) else str(uid) for uid in raw}

    async def ping(self) -> None:
        """Return when Redis answers; raise JournalUnavailable otherwise."""
        await self._retry_once(lambda client: client.ping(), "ping")

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
                await tg.start(self._tail_stream, deliver)
                await tg.start(self._tail_live, deliver)
                task_status.started()
                await self._closing.wait()
                tg.cancel_scope.cancel()
        finally:
            self._tails -= 1

    def _deliver(self, deliver: TailListener, batch: list[StoredEvent]) -> None:
        try:
            deliver(batch)
        except Exception:  # the events are stored; one bad listener must not stop the tail
            self._counters["listener_errors"] += 1
            logger.exception("Redis tail listener %r failed", deliver)

    async def _backoff(self, attempt: int) -> None:
        delay = min(2.0, 0.05 * 2**attempt)
        await anyio.sleep(delay * random.uniform(0.5, 1.0))

    async def _tail_stream(
        self, deliver: TailListener, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        last_id: bytes | None = None
        epoch = self.epoch
        attempt = 0
        started = False
        while True:
            # Its own connection: a blocked XREAD would stall appends sharing one.
            client = self._new_client(socket_timeout=self.block_ms / 1000 + 5.0)
            try:
                if last_id is None:
                    async with client.pipeline(transaction=True) as pipe:
                        pipe.get(self._epoch_key)
                        pipe.xrevrange(self._stream_key, count=1)
                        raw_epoch, newest = await pipe.execute()
                    epoch = epoch if raw_epoch is None else raw_epoch.decode()
                    last_id = newest[0][0] if newest else b"0-0"
                if not started:
                    started = True
                    task_status.started()
                while True:
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.xread(
                            {self._stream_key: last_id}, count=_TAIL_COUNT, block=self.block_ms
                        )
                        pipe.get(self._epoch_key)
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
                    batch = [self._stored(epoch, i, f) for i, f in entries]
                    last_id = entries[-1][0]
                    self._counters["tail_batches"] += 1
                    self._counters["tail_delivered"] += len(batch)
                    self._deliver(deliver, batch)
            except _REDIS_ERRORS as exc:
                self._counters["tail_reconnects"] += 1
                logger.warning("Redis tail lost its connection (%s); reconnecting", exc)
                await self._backoff(attempt)
                attempt += 1
            finally:
                await self._close_client(client)

    async def _tail_live(
        self, deliver: TailListener, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        attempt = 0
        started = False
        while True:
            client = self._new_client(socket_timeout=None)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
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
                    batch = [
                        StoredEvent(
                            None,
                            None,
                            Event(
                                item["type"], item["source"], item["data"], item["ts"], item["uid"]
                            ),
                            orjson.dumps(item["data"]),
                        )
                        for item in orjson.loads(message["data"])
                    ]
                    self._counters["live_received"] += len(batch)
                    self._deliver(deliver, batch)
            except (*_REDIS_ERRORS, TimeoutError) as exc:
                self._counters["tail_reconnects"] += 1
                logger.warning("Redis live channel lost its connection (%s); reconnecting", exc)
                await self._backoff(attempt)
                attempt += 1
            finally:
                with anyio.move_on_after(2, shield=True):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
                await self._close_client(client)

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
                    pipe.execute_command("XTRIM", self._stream_key, "MINID", f"{cutoff_ms}-0")
                pipe.zremrangebyscore(self._uids_key, "-inf", f"({now - _UID_RETENTION!r}")
                *trimmed, expired = await pipe.execute()
        except _REDIS_ERRORS as exc:
            self._counters["cleanup_failures"] += 1
            raise JournalUnavailable(f"Redis cleanup failed: {exc}") from exc
        deleted = int(trimmed[0]) if trimmed else 0
        self._counters["cleanup_runs"] += 1
        self._counters["rows_deleted"] += deleted
        self._counters["uids_deleted"] += int(expired)
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
        stats: dict[str, Any] = dict(self._counters)
        stats["last_append_ms"] = round(self._last_append_ms, 3)
        stats["listeners"] = self._tails
        stats["open"] = 1 if self._state is _State.OPEN else 0
        return stats
