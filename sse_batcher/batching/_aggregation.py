"""Aggregation: which events are similar, how a group of them becomes one event.

Pure logic: no clocks of its own (every method that cares about time takes
``now``), no threads, no I/O. The batcher feeds it members in emit order and asks
it for what is ready; property tests drive it with a simulated clock.

Groups live in one list in the order of their first event and leave it only from
the front, so output order is first-event order. A group is *sealed* by its window
ending, by reaching ``max_batch`` members, by an immediate event (which also seals
every group before it), by per-entity order (below), or at close. A sealed group
behind an open one waits for it; that wait never exceeds its own deadline, because
a group opened earlier has an earlier deadline.

Per-entity order: an event may not join a group that sits before a later group
holding the same entity (e.g. ``job_id=7``), or the consumer would see them out of
order. That group is sealed and the event opens a new group at the end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from sse_batcher._exceptions import ConfigError
from sse_batcher.batching._events import EncodedEvent
from sse_batcher.batching._members import Flushed, Member, batch_event, single_event
from sse_batcher.batching._rules import (
    FLUSHES,
    IMMEDIATE_LEVELS,
    AggregationRule,
    Flush,
    RuleSet,
)

__all__ = ["FLUSH_REASONS", "Aggregator"]

FLUSH_REASONS = (
    "size",
    "time",
    "immediate",
    "order",
    "unbatched",
    "passthrough",
    "leading",
    "flush",
    "close",
)
_QUIET_TABLE_LIMIT = 65_536  # keys remembered for leading-edge quiet detection
_Entity = tuple[str, Hashable]


def _hashable(value: Any) -> Hashable:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


@dataclass(slots=True)
class _Group:
    serial: int
    first_seq: int
    key: tuple[Hashable, ...]
    rule: AggregationRule
    deadline: float
    members: list[Member] = field(default_factory=list)
    # latest mode: entity key -> member, insertion-ordered (newest last)
    latest: dict[tuple[_Entity, ...], Member] | None = None
    entities: set[_Entity] = field(default_factory=set)
    sealed: str | None = None

    def size(self) -> int:
        return len(self.latest) if self.latest is not None else len(self.members)

    def ordered_members(self) -> list[Member]:
        # latest: re-inserted on supersede, so insertion order is arrival order
        return list(self.latest.values()) if self.latest is not None else self.members


class Aggregator:
    """Open groups keyed by rule key; turns members into events ready to write.

    Args:
        rules: the rule set.
        window: seconds from a group's first member to its flush.
        max_batch: members at which a group is sealed.
        flush: the default edge for rules that do not name one.
    """

    def __init__(
        self, rules: RuleSet, *, window: float, max_batch: int, flush: Flush = "trailing"
    ) -> None:
        if flush not in FLUSHES:
            raise ConfigError(f"flush must be 'trailing' or 'leading', not {flush!r}")
        self._rules = rules
        self._flush = flush
        # leading edge: key -> when its latest event arrived (monotonic), bounded
        self._last_at: dict[tuple[Hashable, ...], float] = {}
        self._window = window
        self._max_batch = max_batch
        # First-event order; groups leave from the front only, and nothing keeps a
        # finished group (or its members' data) alive once it has left.
        self._groups: deque[_Group] = deque()
        # Events that needed no group (nothing older was held): they precede every group.
        self._ready: list[Flushed] = []
        self._open: dict[tuple[Hashable, ...], _Group] = {}
        self._entity_serial: dict[_Entity, int] = {}
        self._serial = 0
        self.members_held = 0
        self.bytes_held = 0
        self.coalesced = 0
        self.sealed_by: dict[str, int] = dict.fromkeys(FLUSH_REASONS, 0)

    # -- feeding -------------------------------------------------------------------

    def add(self, member: Member) -> None:
        """Place one member (in emit order)."""
        index, rule = self._rules.rule_for(member.type, member.source)
        data = member.data
        entities = self._entities(rule, data)
        immediate = rule.immediate or data.get("level") in IMMEDIATE_LEVELS
        self.members_held += 1

        if rule.mode == "passthrough" or not member.batching:
            reason = "passthrough" if rule.mode == "passthrough" else "unbatched"
            self._deliver_alone(index, rule, member, entities, "immediate" if immediate else reason)
            return

        # The channel is part of every key: a batch never mixes channels, so a
        # subscriber allowed one channel never receives another's members.
        if rule.key_fields:
            key: tuple[Hashable, ...] = (
                index,
                member.source,
                member.type,
                member.channel,
                *[_hashable(data.get(f)) for f in rule.key_fields],
            )
        else:
            key = (index, member.source, member.type, member.channel)
        group_or_none = self._open.get(key)
        if group_or_none is not None and entities:
            serial = group_or_none.serial
            entity_serial = self._entity_serial
            for entity in entities:
                if entity_serial.get(entity, -1) > serial:
                    # Joining would deliver this event before an earlier event of the
                    # same entity that sits in a later group: seal, start afresh behind.
                    self._seal(group_or_none, "order")
                    group_or_none = None
                    break
        if (rule.flush or self._flush) == "leading" and self._leads(key, member.emitted_at):
            if group_or_none is None and not immediate:
                self._deliver_alone(index, rule, member, entities, "leading")
                return
        if group_or_none is None:
            group = self._new_group(index, rule, member, key=key, entities=entities)
        else:
            group = group_or_none
            self._join(group, member, entities)
        if immediate:
            self._seal(group, "immediate")
            self._seal_through(group.serial)
        elif group.size() >= self._max_batch:
            self._seal(group, "size")

    def _deliver_alone(
        self,
        index: int,
        rule: AggregationRule,
        member: Member,
        entities: tuple[_Entity, ...],
        reason: str,
    ) -> None:
        """Send one member as it is, as soon as order allows (behind older groups)."""
        if not self._groups:
            # Nothing older is held, so no group is needed to keep order: the
            # event is ready now (the common case with batching switched off).
            self.members_held -= 1
            self.sealed_by[reason] += 1
            self._ready.append(Flushed(single_event(member, rule.persist), member.seq))
            return
        group = self._new_group(index, rule, member, key=None, entities=entities)
        self._seal(group, reason)
        if reason == "immediate":
            self._seal_through(group.serial)

    def _leads(self, key: tuple[Hashable, ...], at: float) -> bool:
        """Leading edge: True when no event of ``key`` arrived in the last window."""
        last_at = self._last_at
        previous = last_at.get(key)
        if previous is None and len(last_at) >= _QUIET_TABLE_LIMIT:
            # Forget keys quiet for a window (they would lead anyway); if every key is
            # busy, forget them all: the cost is one early event per key, never a loss.
            horizon = at - self._window
            for stale in [k for k, seen in last_at.items() if seen <= horizon]:
                del last_at[stale]
            if len(last_at) >= _QUIET_TABLE_LIMIT:
                last_at.clear()
        last_at[key] = at
        return previous is None or at - previous >= self._window

    def seal_all(self, reason: str = "close") -> None:
        """Seal every open group (at close, or for an explicit flush)."""
        for group in list(self._open.values()):
            self._seal(group, reason)

    # -- draining ------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``ready`` next has something: None when nothing is held; a time
        in the past (``-inf``) when the front group is already sealed."""
        if self._ready:
            return float("-inf")
        if not self._groups:
            return None
        front = self._groups[0]
        return float("-inf") if front.sealed else front.deadline

    def oldest_seq(self) -> int | None:
        """A lower bound of the emit sequence numbers still held (None: nothing held)."""
        if self._ready:
            return self._ready[0].first_seq
        if not self._groups:
            return None
        return self._groups[0].first_seq

    def ready(self, now: float) -> list[Flushed]:
        """Seal groups whose window has ended and pop every sealed group at the front."""
        out, self._ready = self._ready, []
        groups = self._groups
        while groups:
            group = groups[0]
            if group.sealed is None:
                if group.deadline > now:
                    break
                self._seal(group, "time")
            groups.popleft()
            out.append(Flushed(self._finish(group), group.first_seq))
        return out

    # -- internals -----------------------------------------------------------------

    def _entities(self, rule: AggregationRule, data: Mapping[str, Any]) -> tuple[_Entity, ...]:
        if rule.entity_fields is None:
            for name, value in data.items():
                if value is not None and name.endswith("_id"):
                    if value.__class__ is not str and value.__class__ is not int:
                        value = _hashable(value)
                    return ((name, value),)
            return ()
        return tuple(
            (name, _hashable(data[name]))
            for name in rule.entity_fields
            if data.get(name) is not None
        )

    def _new_group(
        self,
        index: int,
        rule: AggregationRule,
        member: Member,
        *,
        key: tuple[Hashable, ...] | None,
        entities: tuple[_Entity, ...],
    ) -> _Group:
        self._serial += 1
        group = _Group(
            serial=self._serial,
            first_seq=member.seq,
            key=key if key is not None else (index, self._serial),
            rule=rule,
            deadline=member.emitted_at + self._window,
            latest={} if rule.mode == "latest" else None,
        )
        self._groups.append(group)
        if key is not None:
            self._open[key] = group
        self._join(group, member, entities)
        return group

    def _join(self, group: _Group, member: Member, entities: tuple[_Entity, ...]) -> None:
        self.bytes_held += len(member.data_json)
        if group.latest is None:
            group.members.append(member)
        else:
            ident = entities or (("", id(member)),)
            superseded = group.latest.pop(ident, None)
            if superseded is not None:
                self.coalesced += 1
                self.members_held -= 1
                self.bytes_held -= len(superseded.data_json)
            group.latest[ident] = member
        for entity in entities:
            group.entities.add(entity)
            self._entity_serial[entity] = group.serial

    def _seal(self, group: _Group, reason: str) -> None:
        if group.sealed is not None:
            return
        group.sealed = reason
        self.sealed_by[reason] += 1
        if self._open.get(group.key) is group:
            del self._open[group.key]

    def _seal_through(self, serial: int) -> None:
        for group in self._groups:
            if group.serial > serial:
                break
            self._seal(group, "immediate")

    def drop_oldest(self, n: int) -> int:
        """Drop whole groups from the front until ``n`` members are gone (the
        ``drop_oldest`` overflow policy); returns how many members were dropped."""
        dropped = min(n, len(self._ready))
        del self._ready[:dropped]
        while dropped < n and self._groups:
            group = self._groups.popleft()
            if self._open.get(group.key) is group:
                del self._open[group.key]
            dropped += len(self._release(group))
        return dropped

    def _release(self, group: _Group) -> list[Member]:
        """Forget a group that left the front; returns its members."""
        for entity in group.entities:
            if self._entity_serial.get(entity) == group.serial:
                del self._entity_serial[entity]
        members = group.ordered_members()
        self.members_held -= len(members)
        self.bytes_held -= sum(len(m.data_json) for m in members)
        return members

    def _finish(self, group: _Group) -> EncodedEvent:
        members = self._release(group)
        if len(members) == 1:
            return single_event(members[0], group.rule.persist)
        return batch_event(group.rule, members)
