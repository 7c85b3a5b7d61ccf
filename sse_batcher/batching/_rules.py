"""Aggregation rules: which events are similar, how their batch is named.

``AggregationRule`` says which events a rule covers, what joins them (the key),
how members merge (collect, keep the latest per entity, pass through), and when a
group leaves (its window's trailing or leading edge, immediately). ``RuleSet``
finds the rule for an event, first match first. ``batch_type_for`` names a batch
in English (``JOB_STARTED`` -> ``JOBS_BATCH_STARTED``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from sse_batcher._exceptions import ConfigError, InvalidEvent
from sse_batcher.batching._events import check_name

__all__ = [
    "FLUSHES",
    "IMMEDIATE_LEVELS",
    "AggregationRule",
    "Flush",
    "Mode",
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
IMMEDIATE_LEVELS = frozenset(("error", "critical"))
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
