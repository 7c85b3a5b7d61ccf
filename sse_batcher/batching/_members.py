"""What the aggregator holds and hands out: members in, ready events out.

``Member`` is one emitted event on its way through (a tuple: it is built per event).
``single_event`` and ``batch_event`` turn a finished group into the one event that
is written and streamed; a batch splices its members' encoded data, never
re-encoding it, so nothing a member carried is lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from sse_batcher.batching._events import DEFAULT_CHANNEL, EncodedEvent, Event
from sse_batcher.batching._rules import AggregationRule, batch_type_for, collected_name

__all__ = ["Flushed", "Member", "batch_event", "single_event"]


class Member(NamedTuple):
    """One emitted event on its way through the aggregator.

    A tuple rather than an ``Event``: building a frozen dataclass per emitted
    event costs more than the rest of the hot path, and only delivered messages
    need one (a batch of ten needs one, not eleven).

    Attributes:
        type, source, data, ts, uid: the event's fields as emitted.
        data_json: its data, encoded once.
        emitted_at: monotonic time of the emit (windows are timed from it).
        batching: False when its source has batching switched off.
        seq: the batcher's emit sequence number (for durable-ingest waiters).
        channel: the event's channel (part of every group key).
    """

    type: str
    source: str
    data: Mapping[str, Any]
    ts: float
    uid: str | None
    data_json: bytes
    emitted_at: float
    batching: bool = True
    seq: int = 0
    channel: str = DEFAULT_CHANNEL

    def to_event(self) -> Event:
        """The member as an ``Event``."""
        return Event(self.type, self.source, self.data, self.ts, self.uid, self.channel)


class Flushed(NamedTuple):
    """An event ready to write, with the lowest emit sequence number it accounts for."""

    item: EncodedEvent
    first_seq: int


def single_event(member: Member, persist: bool) -> EncodedEvent:
    """A group of one: the original event, unchanged."""
    return EncodedEvent(
        event=member.to_event(),
        data_json=member.data_json,
        persist=persist,
        uids=(member.uid,) if member.uid else (),
        members=1,
        emitted_at=member.emitted_at,
    )


def batch_event(rule: AggregationRule, members: list[Member]) -> EncodedEvent:
    """Merge N ≥ 2 members into one batch event; nothing a member carried is lost:
    ``items`` holds ``{"ts", "uid", "data"}`` for each member, in emit order."""
    first = members[0]
    datas = [m.data for m in members]
    if rule.id_fields is None:
        id_fields = [k for k in datas[0] if k.endswith("_id") and all(k in d for d in datas)]
    else:
        id_fields = [k for k in rule.id_fields if all(k in d for d in datas)]
    head: dict[str, Any] = {
        "member_type": first.type,
        "batch_count": len(members),
        "first_ts": first.ts,
        "last_ts": members[-1].ts,
    }
    for name in id_fields:
        head[collected_name(name)] = [d[name] for d in datas]
    # Each item is the member as emitted: its own ts and uid beside its data (the
    # batch's ts is the first member's). The members' already-encoded data is spliced
    # in, not encoded again.
    dumps = orjson.dumps
    items_json = b",".join(
        b'{"ts":' + dumps(m.ts) + b',"uid":' + dumps(m.uid) + b',"data":' + m.data_json + b"}"
        for m in members
    )
    data_json = dumps(head)[:-1] + b',"items":[' + items_json + b"]}"
    data = {**head, "items": [{"ts": m.ts, "uid": m.uid, "data": m.data} for m in members]}
    event = Event(
        type=rule.batch_type or batch_type_for(first.type),
        source=first.source,
        data=data,
        ts=first.ts,
        channel=first.channel,
    )
    return EncodedEvent(
        event=event,
        data_json=data_json,
        persist=rule.persist,
        uids=tuple(m.uid for m in members if m.uid),
        members=len(members),
        emitted_at=members[0].emitted_at,
    )
