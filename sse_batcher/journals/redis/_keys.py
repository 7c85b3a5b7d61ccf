"""What ``RedisJournal`` and its tail share: the keys, the epoch script, how an event
is written to and read from the stream and the live channel, and how a client is made.

Keys, all under one prefix (see ``_redis_journal.py``)::

    {prefix}:events   the stream; entry ids are the event ids, global across nodes
    {prefix}:epoch    created atomically with the stream (ENSURE_STREAM)
    {prefix}:uids     sorted set uid -> time stored, for de-duplication after restarts
    {prefix}:live     pub/sub channel for stream-only (persist=False) events
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sse_batcher.batching._events import (
    DEFAULT_CHANNEL,
    EncodedEvent,
    Event,
    Position,
    StoredEvent,
)
from sse_batcher.batching._journal import Resume, format_event_id

__all__ = [
    "ENSURE_STREAM",
    "REDIS_ERRORS",
    "Keys",
    "close_client",
    "drop_connections",
    "entry_fields",
    "live_events",
    "live_message",
    "new_client",
    "queue_append",
    "resume_at",
    "stored_entry",
    "stream_id",
    "stream_position",
]

REDIS_ERRORS = (RedisError, OSError)

# Creates the stream empty (XGROUP ... MKSTREAM, then drop the group) together with a
# new epoch, or keeps the existing stream's epoch. Atomic, so nodes racing at start
# agree on one epoch. An empty XADD+XDEL would count as a deleted entry and make
# resume() report "trimmed" for a stream that never lost anything.
ENSURE_STREAM = """
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


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names under one prefix."""

    stream: str
    epoch: str
    uids: str
    channel: str

    @classmethod
    def under(cls, prefix: str) -> Keys:
        return cls(f"{prefix}:events", f"{prefix}:epoch", f"{prefix}:uids", f"{prefix}:live")


def new_client(url: str, *, socket_timeout: float | None = 5.0) -> aioredis.Redis:
    """A client for ``url`` that never retries a command by itself."""
    # No redis-py retries: re-sending an EXEC whose reply was lost could append a
    # batch twice. The batcher owns retries (with backoff and dead-lettering).
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 0),
    )


async def close_client(client: aioredis.Redis) -> None:
    """Close ``client``, giving up after two seconds."""
    with anyio.move_on_after(2, shield=True):
        await client.aclose()


async def drop_connections(client: aioredis.Redis) -> None:
    """Disconnect every pooled connection, so the next command opens a fresh one."""
    with anyio.move_on_after(2, shield=True):
        await client.connection_pool.disconnect()


def stream_id(position: Position) -> str:
    """The stream entry id (``ms-seq``) of a position."""
    return f"{position.major}-{position.minor}"


def stream_position(raw: bytes | str) -> Position:
    """The position of a stream entry id (``ms-seq``)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, seq = text.split("-", 1)
    return Position(int(ms), int(seq))


def entry_fields(encoded: EncodedEvent) -> dict[str, bytes | str]:
    """The stream entry of one persisted event."""
    event = encoded.event
    fields: dict[str, bytes | str] = {
        "type": event.type,
        "source": event.source,
        "ts": repr(event.ts),
        "data": encoded.data_json,
    }
    if event.channel != DEFAULT_CHANNEL:  # entries without the field are on the default
        fields["channel"] = event.channel
    if event.uid is not None:
        fields["uid"] = event.uid
    if encoded.uids:
        fields["uids"] = orjson.dumps(encoded.uids)
    return fields


def stored_entry(epoch: str, entry_id: bytes, fields: dict[bytes, bytes]) -> StoredEvent:
    """A stream entry as read back, with its wire id in ``epoch``."""
    position = stream_position(entry_id)
    data_json = fields[b"data"]
    uid = fields.get(b"uid")
    channel = fields.get(b"channel")
    event = Event(
        type=fields[b"type"].decode(),
        source=fields[b"source"].decode(),
        data=orjson.loads(data_json),
        ts=float(fields[b"ts"]),
        uid=None if uid is None else uid.decode(),
        channel=DEFAULT_CHANNEL if channel is None else channel.decode(),
    )
    return StoredEvent(format_event_id(epoch, position, two_part=True), position, event, data_json)


def live_message(events: Sequence[EncodedEvent]) -> bytes:
    """One message on the live channel: stream-only events as a JSON array."""
    return orjson.dumps(
        [
            {
                "type": e.event.type,
                "source": e.event.source,
                "ts": e.event.ts,
                "uid": e.event.uid,
                "channel": e.event.channel,
                "data": orjson.Fragment(e.data_json),
            }
            for e in events
        ]
    )


def live_events(payload: Any) -> list[StoredEvent]:
    """The events of one live channel message, without ids or positions."""
    return [
        StoredEvent(
            None,
            None,
            Event(
                item["type"],
                item["source"],
                item["data"],
                item["ts"],
                item["uid"],
                item.get("channel", DEFAULT_CHANNEL),
            ),
            orjson.dumps(item["data"]),
        )
        for item in orjson.loads(payload)
    ]


def queue_append(
    pipe: Pipeline,
    keys: Keys,
    persisted: Sequence[EncodedEvent],
    uids: dict[str, float],
    live: Sequence[EncodedEvent],
    maxlen: int | None,
) -> None:
    """Queue an append's commands: XADD NOMKSTREAM per entry, ZADD the uids, PUBLISH live."""
    for e in persisted:
        pipe.xadd(
            keys.stream,
            entry_fields(e),  # type: ignore[arg-type]
            maxlen=maxlen,
            approximate=True,
            nomkstream=True,
        )
    if uids:
        pipe.zadd(keys.uids, uids)  # type: ignore[arg-type,unused-ignore]
    if live:
        pipe.publish(keys.channel, live_message(live))


def resume_at(cursor_epoch: str | None, position: Position, epoch: str, info: Any) -> Resume:
    """Where a cursor resumes, given the stream's ``XINFO STREAM`` (``{}`` when it is gone)."""
    first = info.get("first-entry")
    oldest = None if not first else format_event_id(epoch, stream_position(first[0]), two_part=True)
    if cursor_epoch is not None and cursor_epoch != epoch:
        return Resume(None, "epoch", oldest)
    last = stream_position(info.get("last-generated-id", b"0-0"))
    if position > last:
        return Resume(None, "future", oldest)
    length = int(info.get("length", 0))
    removed = int(info.get("entries-added", 0)) - length
    max_deleted = stream_position(info.get("max-deleted-entry-id", b"0-0"))
    # Trimming removes the oldest entries, so something after the cursor is gone
    # iff the cursor is older than the first kept entry (or than the last id, once
    # everything went). A cursor equal to the newest removed entry is reported as
    # trimmed too: the stream no longer tells which entry that was.
    if (
        max_deleted > position
        or (removed > 0 and first and position < stream_position(first[0]))
        or (removed > 0 and not first and position < last)
    ):
        return Resume(None, "trimmed", oldest)
    return Resume(position, None, oldest)
