"""Aggregation: naming, merging, and the three invariants as hypothesis properties."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_batcher import AggregationRule, ConfigError
from sse_batcher.batching._aggregation import Aggregator
from sse_batcher.batching._members import Flushed, Member
from sse_batcher.batching._rules import Flush, RuleSet


def member(
    type: str,
    data: dict[str, Any],
    *,
    at: float = 0.0,
    source: str = "w",
    batching: bool = True,
    seq: int = 0,
) -> Member:
    return Member(type, source, data, 1000.0 + at, None, orjson.dumps(data), at, batching, seq)


def test_three_starts_become_one_batch_with_collected_ids() -> None:
    agg = Aggregator(RuleSet(), window=0.5, max_batch=10)
    for i, job in enumerate((123, 124, 125)):
        agg.add(member("JOB_STARTED", {"job_id": job, "camera_id": 7}, at=i * 0.1))
    assert agg.ready(0.49) == []
    [flushed] = agg.ready(0.5)
    event = flushed.item.event
    assert event.type == "JOBS_BATCH_STARTED"
    assert event.data["job_ids"] == [123, 124, 125]
    assert event.data["camera_ids"] == [7, 7, 7]
    assert event.data["batch_count"] == 3
    assert event.data["first_ts"] == 1000.0 and event.data["last_ts"] == pytest.approx(1000.2)
    assert orjson.loads(flushed.item.data_json) == {
        "member_type": "JOB_STARTED",
        "batch_count": 3,
        "first_ts": 1000.0,
        "last_ts": pytest.approx(1000.2),
        "job_ids": [123, 124, 125],
        "camera_ids": [7, 7, 7],
        "items": [
            {
                "ts": pytest.approx(1000.0 + i * 0.1),
                "uid": None,
                "data": {"job_id": j, "camera_id": 7},
            }
            for i, j in enumerate((123, 124, 125))
        ],
    }
    assert flushed.item.members == 3


def test_group_of_one_is_delivered_unchanged() -> None:
    agg = Aggregator(RuleSet(), window=0.5, max_batch=10)
    data = {"job_id": 1, "note": "ünïcode"}
    agg.add(member("JOB_STARTED", data))
    [flushed] = agg.ready(1.0)
    assert flushed.item.event.type == "JOB_STARTED"
    assert flushed.item.event.data is data
    assert flushed.item.data_json == orjson.dumps(data)


def test_size_trigger_and_ids_only_when_shared() -> None:
    agg = Aggregator(RuleSet(), window=10, max_batch=2)
    agg.add(member("JOB_STARTED", {"job_id": 1}))
    agg.add(member("JOB_STARTED", {"other": 2}))
    [flushed] = agg.ready(0.0)  # sealed by size, no need to wait for the window
    assert flushed.item.event.data["batch_count"] == 2
    assert "job_ids" not in flushed.item.event.data
    assert agg.sealed_by["size"] == 1


def test_key_fields_split_groups_and_rule_names_batch() -> None:
    rule = AggregationRule(types="FRAME_CAPTURED", key_fields=("camera_id",), batch_type="FRAMES")
    agg = Aggregator(RuleSet([rule]), window=1, max_batch=10)
    for cam in (1, 2, 1, 2):
        agg.add(member("FRAME_CAPTURED", {"camera_id": cam}))
    out = agg.ready(1.0)
    assert [f.item.event.type for f in out] == ["FRAMES", "FRAMES"]
    assert [f.item.event.data["camera_ids"] for f in out] == [[1, 1], [2, 2]]


def test_latest_mode_keeps_newest_per_entity_and_counts_coalesced() -> None:
    rule = AggregationRule(types="JOB_PROGRESS", mode="latest", entity_fields=("job_id",))
    agg = Aggregator(RuleSet([rule]), window=1, max_batch=10)
    for pct in (10, 50, 90):
        agg.add(member("JOB_PROGRESS", {"job_id": 1, "pct": pct}))
    agg.add(member("JOB_PROGRESS", {"job_id": 2, "pct": 5}))
    [flushed] = agg.ready(1.0)
    assert [i["data"] for i in flushed.item.event.data["items"]] == [
        {"job_id": 1, "pct": 90},
        {"job_id": 2, "pct": 5},
    ]
    assert agg.coalesced == 2


def test_immediate_error_flushes_everything_before_it() -> None:
    agg = Aggregator(RuleSet(), window=30, max_batch=10)
    agg.add(member("JOB_STARTED", {"job_id": 1}))
    agg.add(member("LOG_INFO", {"message": "x"}))
    agg.add(member("JOB_FAILED", {"job_id": 1, "level": "error"}))
    agg.add(member("LOG_INFO", {"message": "after"}))  # joins the open LOG_INFO group? no: sealed
    out = agg.ready(0.0)
    assert [f.item.event.type for f in out] == ["JOB_STARTED", "LOG_INFO", "JOB_FAILED"]
    assert agg.next_deadline() == 30  # the LOG_INFO after the error waits for its window


def test_passthrough_and_unbatched_are_never_merged() -> None:
    rule = AggregationRule(types="HEARTBEAT", mode="passthrough")
    agg = Aggregator(RuleSet([rule]), window=1, max_batch=10)
    agg.add(member("HEARTBEAT", {}))
    agg.add(member("HEARTBEAT", {}))
    agg.add(member("JOB_STARTED", {"job_id": 1}, batching=False))
    agg.add(member("JOB_STARTED", {"job_id": 2}, batching=False))
    out = agg.ready(0.0)
    assert [f.item.members for f in out] == [1, 1, 1, 1]
    assert agg.sealed_by["passthrough"] == 2 and agg.sealed_by["unbatched"] == 2


def test_order_rule_seals_instead_of_reordering_an_entity() -> None:
    agg = Aggregator(RuleSet(), window=1, max_batch=10)
    agg.add(member("JOB_COMPLETED", {"job_id": 0}))
    agg.add(member("JOB_STARTED", {"job_id": 1}))
    agg.add(member("JOB_COMPLETED", {"job_id": 1}))  # must not join job 0's group
    out = agg.ready(1.0)
    assert [f.item.event.type for f in out] == ["JOB_COMPLETED", "JOB_STARTED", "JOB_COMPLETED"]
    assert agg.sealed_by["order"] == 1


def test_rule_validation() -> None:
    with pytest.raises(ConfigError, match="mode"):
        AggregationRule(mode="merge")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="entity_fields"):
        AggregationRule(mode="latest", entity_fields=())
    with pytest.raises(ConfigError):
        AggregationRule(batch_type="BAD:NAME")
    with pytest.raises(ConfigError):
        RuleSet(["not a rule"])  # type: ignore[list-item]


def test_first_matching_rule_wins() -> None:
    specific = AggregationRule(types="JOB_STARTED", sources="a", mode="passthrough")
    general = AggregationRule(types=("JOB_STARTED",), immediate=True)
    rules = RuleSet([specific, general])
    assert rules.rule_for("JOB_STARTED", "a") == (0, specific)
    assert rules.rule_for("JOB_STARTED", "b") == (1, general)
    assert rules.rule_for("OTHER", "a")[0] == -1


# -- properties --------------------------------------------------------------------

TYPES = ["JOB_STARTED", "JOB_PROGRESS", "JOB_COMPLETED", "JOB_FAILED", "LOG_INFO", "HEARTBEAT"]
RULES = [
    AggregationRule(types="JOB_PROGRESS", mode="latest", entity_fields=("job_id",)),
    AggregationRule(types="HEARTBEAT", mode="passthrough"),
]

step = st.tuples(
    st.floats(min_value=0, max_value=0.7),  # time since the previous event
    st.sampled_from(TYPES),
    st.sampled_from(["a", "a", "b"]),  # source
    st.one_of(st.none(), st.integers(min_value=0, max_value=4)),  # job_id
    st.sampled_from([False] * 9 + [True]),  # error level (rare: it seals everything)
    st.sampled_from([True] * 9 + [False]),  # batching on for this event's source
    st.sampled_from(["default", "default", "user.1.jobs", "user.2.jobs"]),  # channel
)


def property_cases(test: Callable[..., None]) -> Callable[..., None]:
    """Every property runs over the same random streams: steps, a window, a max_batch."""
    cases = given(
        steps=st.lists(step, max_size=80),
        window=st.sampled_from([0.1, 0.5, 1.0]),
        max_batch=st.integers(1, 5),
        flush=st.sampled_from(["trailing", "leading"]),
    )
    return settings(max_examples=300, deadline=None)(cases(test))


def _drive(
    steps: list[tuple[float, str, str, int | None, bool, bool, str]],
    window: float,
    max_batch: int,
    flush: Flush = "trailing",
) -> tuple[list[dict[str, Any]], list[tuple[float, Flushed]], Aggregator]:
    agg = Aggregator(RuleSet(RULES), window=window, max_batch=max_batch, flush=flush)
    raw: list[dict[str, Any]] = []
    delivered: list[tuple[float, Flushed]] = []
    now = 0.0

    def advance_to(t: float) -> None:
        while (deadline := agg.next_deadline()) is not None and deadline <= t:
            at = max(deadline, 0.0)
            delivered.extend((at, f) for f in agg.ready(at))

    for n, (dt, type_, source, job, error, batching, channel) in enumerate(steps):
        now += dt
        advance_to(now)
        data: dict[str, Any] = {"n": n, "ch": channel}
        if job is not None:
            data["job_id"] = job
        if error:
            data["level"] = "error"
        raw.append({"type": type_, "source": source, **data})
        agg.add(
            Member(
                type_, source, data, 1000 + now, None, orjson.dumps(data), now, batching, n, channel
            )
        )
        delivered.extend((now, f) for f in agg.ready(now))
    advance_to(math.inf)
    agg.seal_all()
    delivered.extend((now, f) for f in agg.ready(now))
    return raw, delivered, agg


def _members(flushed: Flushed) -> list[dict[str, Any]]:
    data = dict(flushed.item.event.data)
    if flushed.item.members == 1:
        return [data]
    return [item["data"] for item in data["items"]]


@property_cases
def test_members_in_equal_members_out_plus_coalesced(
    steps: list[Any], window: float, max_batch: int, flush: Flush
) -> None:
    raw, delivered, agg = _drive(steps, window, max_batch, flush)
    out = [m for _, f in delivered for m in _members(f)]
    assert len(raw) == len(out) + agg.coalesced
    assert sum(f.item.members for _, f in delivered) == len(out)
    assert agg.members_held == 0 and agg.bytes_held == 0
    # only latest-mode events are ever coalesced, and nothing is delivered twice
    delivered_n = {m["n"] for m in out}
    assert len(delivered_n) == len(out)
    missing = [r for r in raw if r["n"] not in delivered_n]
    assert all(r["type"] == "JOB_PROGRESS" for r in missing)


@property_cases
def test_per_entity_state_matches_emit_order(
    steps: list[Any], window: float, max_batch: int, flush: Flush
) -> None:
    raw, delivered, _ = _drive(steps, window, max_batch, flush)
    out = [m for _, f in delivered for m in _members(f)]
    for job in range(5):
        sent = [r["n"] for r in raw if r.get("job_id") == job]
        got = [m["n"] for m in out if m.get("job_id") == job]
        assert got == sorted(got), f"job {job} delivered out of order: {got}"
        assert set(got) <= set(sent)
        if sent:  # a consumer ends in the same state: the last event survives
            assert got and got[-1] == sent[-1]


@property_cases
def test_delivery_never_later_than_first_event_plus_window(
    steps: list[Any], window: float, max_batch: int, flush: Flush
) -> None:
    _, delivered, _ = _drive(steps, window, max_batch, flush)
    for at, flushed in delivered:
        assert at <= flushed.item.emitted_at + window + 1e-9


def test_leading_edge_sends_the_first_event_at_once_and_merges_the_rest() -> None:
    agg = Aggregator(RuleSet(), window=0.5, max_batch=10, flush="leading")
    agg.add(member("JOB_STARTED", {"job_id": 1}, at=0.0, seq=1))
    first = agg.ready(0.0)  # no window to wait for: the quiet period ended it
    assert [f.item.event.type for f in first] == ["JOB_STARTED"]
    for n in (2, 3, 4):
        agg.add(member("JOB_STARTED", {"job_id": n}, at=0.01 * n, seq=n))
    assert agg.ready(0.1) == []  # the followers wait for their window
    (batch,) = agg.ready(0.02 + 0.5)
    assert batch.item.event.type == "JOBS_BATCH_STARTED"
    assert batch.item.event.data["job_ids"] == [2, 3, 4]
    # quiet for a whole window again: the next one leads
    agg.add(member("JOB_STARTED", {"job_id": 9}, at=2.0, seq=9))
    assert [f.item.event.data["job_id"] for f in agg.ready(2.0)] == [9]
    assert agg.sealed_by["leading"] == 2


def test_a_rule_can_choose_its_edge() -> None:
    rules = RuleSet([AggregationRule(types="JOB_STARTED", flush="trailing")])
    agg = Aggregator(rules, window=0.5, max_batch=10, flush="leading")
    agg.add(member("JOB_STARTED", {"job_id": 1}, at=0.0, seq=1))
    agg.add(member("JOB_DONE", {"job_id": 2}, at=0.0, seq=2))
    assert agg.ready(0.0) == []  # the trailing group is older: the leading one waits
    assert [f.item.event.type for f in agg.ready(0.5)] == ["JOB_STARTED", "JOB_DONE"]
    with pytest.raises(ConfigError):
        AggregationRule(flush="middle")  # type: ignore[arg-type]


@property_cases
def test_a_batch_never_holds_two_channels(
    steps: list[Any], window: float, max_batch: int, flush: Flush
) -> None:
    _, delivered, _ = _drive(steps, window, max_batch, flush)
    for _, flushed in delivered:
        channel = flushed.item.event.channel
        assert {m["ch"] for m in _members(flushed)} == {channel}


def test_same_type_and_source_on_two_channels_make_two_batches() -> None:
    agg = Aggregator(RuleSet(), window=0.5, max_batch=10)
    for n, channel in enumerate(["user.1.jobs", "user.2.jobs"] * 3):
        data = {"job_id": n}
        agg.add(
            Member(
                "JOB_STARTED", "w", data, 1000.0, None, orjson.dumps(data), 0.0, True, n, channel
            )
        )
    out = agg.ready(1.0)
    assert [(f.item.event.channel, f.item.event.data["job_ids"]) for f in out] == [
        ("user.1.jobs", [0, 2, 4]),
        ("user.2.jobs", [1, 3, 5]),
    ]


def test_batch_items_keep_each_members_own_ts_and_uid() -> None:
    agg = Aggregator(RuleSet(), window=0.5, max_batch=10)
    for i in range(3):
        data = {"job_id": i}
        uid = f"u{i}" if i != 1 else None
        agg.add(Member("JOB_STARTED", "w", data, 2000.0 + i, uid, orjson.dumps(data), i * 0.1))
    [flushed] = agg.ready(1.0)
    expected = [
        {"ts": 2000.0, "uid": "u0", "data": {"job_id": 0}},
        {"ts": 2001.0, "uid": None, "data": {"job_id": 1}},
        {"ts": 2002.0, "uid": "u2", "data": {"job_id": 2}},
    ]
    assert flushed.item.event.data["items"] == expected
    assert orjson.loads(flushed.item.data_json)["items"] == expected  # the spliced bytes too
    assert flushed.item.uids == ("u0", "u2")
