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
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import orjson

from sse_batcher._exceptions import ConfigError, InvalidEvent
from sse_batcher.batching._events import DEFAULT_CHANNEL, EncodedEvent, Event, check_name

__all__ = [
    "FLUSHES",
    "FLUSH_REASONS",
    "AggregationRule",
    "Aggregator",
    "Flush",
    "Flushed",
    "Member",
    "RuleSet",
    "batch_type_for",
    "collected_name",
]

Mode = Literal["collect", "latest", "passthrough"]
_MODES = ("collect", "latest", "passthrough")
# "trailing": a group waits its window from its first event. "leading": the first event
# after a quiet window goes out at once, and only those that follow it are merged.
Flush = Literal["trailing", "leading"]
FLUSHES = ("trailing", "leading")
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


_VOWELS = frozenset("AEIOUaeiou")


def batch_type_for(event_type: str) -> str:
    """Default batch event name: the type's first word in the plural, then ``BATCH``.

    ``JOB_STARTED`` → ``JOBS_BATCH_STARTED``, ``BOX_MOVED`` → ``BOXES_BATCH_MOVED``,
    ``ENTRY_ADDED`` → ``ENTRIES_BATCH_ADDED``, ``job_started`` →
    ``jobs_batch_started`` (a lower-case type keeps its case). Where the plural
    could be read back two ways the name is the type plus ``_BATCH`` instead: a
    one-word type (``PING`` → ``PING_BATCH``), a first word ending in one ``S``
    (``JOBS_DONE`` → ``JOBS_DONE_BATCH``, so it never meets ``JOB_DONE``'s name;
    ``STATUS_CHANGED`` → ``STATUS_CHANGED_BATCH``), and words whose plural reads
    back as another word (``CACHE`` → ``CACHES`` reads back as ``CACH``).

    So two types never share a batch name unless one of them has a ``BATCH`` word
    of its own; a rule's ``batch_type`` names a batch explicitly.
    """
    head, _, tail = event_type.partition("_")
    batch = "batch" if event_type.islower() else "BATCH"
    upper_head = head.upper()
    if tail and head and (not upper_head.endswith("S") or upper_head.endswith("SS")):
        plural = _plural(head)
        if _singular(plural) == head:
            return f"{plural}_{batch}_{tail}"
    return f"{event_type}_{batch}"


def _lower_case(word: str) -> bool:
    """True when the word's last cased letter is lower case (``Job``, ``job``)."""
    return next((c.islower() for c in reversed(word) if c.isupper() or c.islower()), False)


def _plural(word: str) -> str:
    """The English plural of one word, suffix in the word's case: BOX → BOXES,
    ENTRY → ENTRIES, KEY → KEYS, JOB → JOBS."""
    suffix = str.lower if _lower_case(word) else str.upper
    if len(word) > 1 and word[-1] in "Yy" and word[-2] not in _VOWELS:
        return word[:-1] + suffix("IES")
    if word.upper().endswith(("X", "Z", "CH", "SH", "SS")):
        return word + suffix("ES")
    return word + suffix("S")


def _singular(word: str) -> str:
    """The one reading back of a plural (so distinct words keep distinct plurals):
    ENTRIES → ENTRY, BOXES → BOX, CLASSES → CLASS, CASES → CASE, JOBS → JOB."""
    upper = word.upper()
    if upper.endswith("IES") and len(word) > 3 and word[-4] not in _VOWELS:
        return word[:-3] + ("y" if _lower_case(word) else "Y")
    if upper.endswith(("XES", "CHES", "SHES", "SSES", "ZZES")):
        return word[:-2]
    return word[:-1]


def collected_name(id_field: str) -> str:
    """``job_id`` → ``job_ids``: the data key holding a batch's collected ids."""
    return f"{id_field}s"


def _as_names(value: str | Iterable[str], what: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names:
        raise ConfigError(f"{what} must name at least one entry (use '*' for any)")
    return names


@dataclass(frozen=True, slots=True)
class AggregationRule:
    """Which events are similar and how members merge.

    The first rule whose ``types`` and ``sources`` match an event decides for it;
    events no rule matches use the default rule (collect, key ``(source, type, channel)``).

    Args:
        types: event types the rule applies to, or ``"*"``.
        sources: sources the rule applies to, or ``"*"``.
        key_fields: data fields added to the similarity key ``(source, type, channel)``;
            events differing in them never share a group.
        mode: ``"collect"`` (N ≥ 2 members become one batch event), ``"latest"``
            (only the newest event per entity survives a window; the rest are
            counted as coalesced), ``"passthrough"`` (never merged).
        id_fields: fields whose values a batch collects into lists (``job_id`` →
            ``job_ids``) when every member has them. None means every top-level
            field whose name ends in ``_id``.
        entity_fields: the fields naming what an event is about (``("job_id",)``).
            They drive per-entity order and ``latest`` mode. None means the first
            top-level field whose name ends in ``_id`` (``job_id`` in
            ``{"job_id": 7, "camera_id": 3}``: a camera is an attribute of the job
            there, not the subject); ``()`` means no entity.
        batch_type: name of the batch event; default ``batch_type_for(type)``.
        immediate: flush at once (with everything before it). Events whose data
            has ``"level": "error"`` or ``"critical"`` are immediate whatever the
            rule says.
        persist: False for stream-only events: delivered live, never stored.
        flush: ``"leading"`` delivers the first event after a quiet window (no event
            of the same key for ``window`` seconds) at once, alone, and merges only
            the ones that follow it; ``"trailing"`` holds every group for its window.
            None takes the batcher's default (``SSEEventBatcher(flush=...)``).
    """

    types: tuple[str, ...] | str = "*"
    sources: tuple[str, ...] | str = "*"
    key_fields: tuple[str, ...] = ()
    mode: Mode = "collect"
    id_fields: tuple[str, ...] | None = None
    entity_fields: tuple[str, ...] | None = None
    batch_type: str | None = None
    immediate: bool = False
    persist: bool = True
    flush: Flush | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "types", _as_names(self.types, "types"))
        object.__setattr__(self, "sources", _as_names(self.sources, "sources"))
        object.__setattr__(self, "key_fields", tuple(self.key_fields))
        for name in ("id_fields", "entity_fields"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.mode not in _MODES:
            raise ConfigError(f"mode must be one of {', '.join(_MODES)}, not {self.mode!r}")
        if self.batch_type is not None:
            try:
                check_name("batch_type", self.batch_type)
            except InvalidEvent as exc:
                raise ConfigError(str(exc)) from None
        if self.flush is not None and self.flush not in FLUSHES:
            raise ConfigError(f"flush must be 'trailing' or 'leading', not {self.flush!r}")
        if self.mode == "latest" and self.entity_fields == ():
            raise ConfigError("a 'latest' rule needs entity_fields to know what supersedes what")

    def matches(self, event_type: str, source: str) -> bool:
        """True when this rule applies to events of this type from this source."""
        return ("*" in self.types or event_type in self.types) and (
            "*" in self.sources or source in self.sources
        )


_DEFAULT_RULE = AggregationRule()
_IMMEDIATE_LEVELS = frozenset(("error", "critical"))
_RULE_CACHE_LIMIT = 10_000


class RuleSet:
    """An ordered list of rules; the first match wins, then the default rule."""

    def __init__(self, rules: Sequence[AggregationRule] = ()) -> None:
        for rule in rules:
            if not isinstance(rule, AggregationRule):
                raise ConfigError(f"rules must be AggregationRule instances, not {rule!r}")
        self._rules = tuple(rules)
        self._cache: dict[tuple[str, str], tuple[int, AggregationRule]] = {}

    def __len__(self) -> int:
        return len(self._rules)

    def rule_for(self, event_type: str, source: str) -> tuple[int, AggregationRule]:
        """(index, rule) for an event; index ``-1`` is the default rule."""
        key = (event_type, source)
        found = self._cache.get(key)
        if found is None:
            found = next(
                ((i, r) for i, r in enumerate(self._rules) if r.matches(event_type, source)),
                (-1, _DEFAULT_RULE),
            )
            if len(self._cache) >= _RULE_CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = found
        return found


def _hashable(value: Any) -> Hashable:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


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
        immediate = rule.immediate or data.get("level") in _IMMEDIATE_LEVELS
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
            self._ready.append(Flushed(_single(member, rule.persist), member.seq))
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
            return _single(members[0], group.rule.persist)
        return _batch_event(group.rule, members)


def _single(member: Member, persist: bool) -> EncodedEvent:
    """A group of one: the original event, unchanged."""
    return EncodedEvent(
        event=member.to_event(),
        data_json=member.data_json,
        persist=persist,
        uids=(member.uid,) if member.uid else (),
        members=1,
        emitted_at=member.emitted_at,
    )


def _batch_event(rule: AggregationRule, members: list[Member]) -> EncodedEvent:
    """Merge N ≥ 2 members into one batch event; nothing a member carried is lost."""
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
    # Splice the members' already-encoded data instead of encoding it again.
    items_json = b"[" + b",".join(m.data_json for m in members) + b"]"
    data_json = orjson.dumps(head)[:-1] + b',"items":' + items_json + b"}"
    data = {**head, "items": datas}
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
