"""Channels: patterns, the hub's channel index, and ``?channel=`` over real HTTP (live,
replay, history, ingest, the publisher)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from sse_batcher import (
    AsyncRemotePublisher,
    Event,
    InvalidEvent,
    SQLiteJournal,
    SSEEventBatcher,
    create_app,
)
from sse_batcher.service._channels import (
    ChannelFilter,
    ChannelIndex,
    check_pattern,
    covers,
    normalize,
)

from .servers import serve_app
from .test_streaming import job_ids, stream, take

# -- patterns ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "channel", ["default", "user.42", "user.42.jobs", "a-b_c.d/e", "x" * 200, "Ümlaut.1"]
)
def test_valid_channels(channel: str) -> None:
    assert Event.create("T", source="s", channel=channel).channel == channel


@pytest.mark.parametrize(
    "channel", ["", ".a", "a.", "a..b", "a.*", "*", "a:b", "a\nb", "x" * 201, 7, None]
)
def test_invalid_channels(channel: Any) -> None:
    with pytest.raises(InvalidEvent):
        Event.create("T", source="s", channel=channel)


def test_patterns_and_coverage() -> None:
    assert [check_pattern(p) for p in ("*", "user.42", "user.42.*")] == [
        "*",
        "user.42",
        "user.42.*",
    ]
    for bad in ("user.*.jobs", "*.jobs", ".*", "user..*", "user.4*", ""):
        with pytest.raises(InvalidEvent):
            check_pattern(bad)
    assert covers("user.*", "user.42") and covers("user.*", "user.42.*")
    assert not covers("user.*", "user") and not covers("user.42", "user.42.*")
    assert not covers("user.4.*", "user.42.x")  # segments, not characters
    assert normalize(["user.42.*", "user.*", "user.1", "default"]) == {"user.*", "default"}
    assert normalize(["user.42", "*"]) == {"*"}
    accept = ChannelFilter(["user.42", "team.7.*"])
    assert [accept(c) for c in ("user.42", "user.42.jobs", "team.7", "team.7.a.b")] == [
        True,
        False,
        False,
        True,
    ]


segment = st.sampled_from(["a", "b", "c"])
channels = st.lists(segment, min_size=1, max_size=4).map(".".join)
patterns = st.one_of(st.just("*"), channels, channels.map(lambda c: c + ".*"))


@settings(max_examples=300, deadline=None)
@given(
    subscriptions=st.lists(st.lists(patterns, min_size=1, max_size=4), max_size=12),
    removed=st.sets(st.integers(0, 11)),
    probes=st.lists(channels, min_size=1, max_size=10),
)
def test_the_index_finds_exactly_the_matching_keys_once(
    subscriptions: list[list[str]], removed: set[int], probes: list[str]
) -> None:
    index: ChannelIndex[int] = ChannelIndex()
    normalized = [normalize(s) for s in subscriptions]
    for key, pattern_set in enumerate(normalized):
        index.add(pattern_set, key)
    for key in removed & set(range(len(normalized))):
        index.remove(normalized[key], key)
    live = [k for k in range(len(normalized)) if k not in removed]
    for channel in probes:
        found = index.match(channel)
        assert len(found) == len(set(found)), "a key was yielded twice"
        assert set(found) == {k for k in live if ChannelFilter(normalized[k])(channel)}
    for key in live:
        index.remove(normalized[key], key)
    assert len(index) == 0 and index.match("a.b") == []


# -- over HTTP ---------------------------------------------------------------------------

Running = Callable[..., AbstractAsyncContextManager[tuple[str, Starlette]]]


@pytest.fixture
def running(tmp_path: Path) -> Running:
    @asynccontextmanager
    async def make(**kwargs: Any) -> AsyncIterator[tuple[str, Starlette]]:
        journal = SQLiteJournal(tmp_path / "channels.db")
        app = create_app(SSEEventBatcher(journal, window=0.05), **kwargs)
        async with serve_app(app) as url:
            yield url, app

    return make


def emit_jobs(batcher: SSEEventBatcher, start: int) -> None:
    """Three jobs on user.1.jobs, user.2.jobs and default, same type and source."""
    for n, channel in enumerate(["user.1.jobs", "user.2.jobs", "default"], start):
        batcher.emit("JOB_STARTED", {"job_id": n}, source="w", channel=channel)


@pytest.mark.anyio
async def test_a_subscriber_gets_only_its_channels_live_on_replay_and_in_history(
    running: Running,
) -> None:
    async with running() as (url, app):
        batcher = app.state.batcher
        async with (
            stream(url, "/events?channel=user.1.*") as (_, mine),
            stream(url, "/events?channel=user.2.jobs&channel=default") as (_, others),
            stream(url, "/events") as (_, everything),
        ):
            emit_jobs(batcher, 0)
            emit_jobs(batcher, 0)  # same type, source and window: batched per channel
            [message] = await take(mine, 1)
            assert message.json()["channel"] == "user.1.jobs"
            assert job_ids([message]) == [0, 0]
            got = await take(others, 2)
            assert sorted(m.json()["channel"] for m in got) == ["default", "user.2.jobs"]
            assert len(await take(everything, 3)) == 3
            first_id = message.id
        await batcher.flush()
        emit_jobs(batcher, 10)
        await batcher.flush()
        # replay after the first event: the user.2 and default events are skipped
        async with stream(url, "/events?channel=user.1.*", {"Last-Event-ID": first_id}) as (
            _,
            replay,
        ):
            [again] = await take(replay, 1)
            assert (again.json()["channel"], job_ids([again])) == ("user.1.jobs", [10])
            emit_jobs(batcher, 20)
            [live] = await take(replay, 1)
            assert job_ids([live]) == [20]
        await batcher.flush()
        async with httpx.AsyncClient(base_url=url) as client:
            page = (await client.get("/events/history?channel=user.1.*&limit=2")).json()
            assert [e["channel"] for e in page["events"]] == ["user.1.jobs"] * 2
            assert page["more"] is True
            rest = (
                await client.get(f"/events/history?channel=user.1.*&after={page['next']}")
            ).json()
            assert [e["data"]["job_id"] for e in rest["events"]] == [20]
            assert rest["more"] is False
            assert [
                e["channel"] for e in (await client.get("/events/history")).json()["events"]
            ] == ["user.1.jobs", "user.2.jobs", "default"] * 3


@pytest.mark.anyio
async def test_bad_and_too_many_patterns_are_a_400(running: Running) -> None:
    async with running() as (url, _), httpx.AsyncClient(base_url=url) as client:
        for path in ("/events", "/events/history"):
            bad = await client.get(f"{path}?channel=user.*.jobs")
            assert bad.status_code == 400 and "channel" in bad.json()["error"]
            many = "&".join(f"channel=c.{n}" for n in range(33))
            assert (await client.get(f"{path}?{many}")).status_code == 400


@pytest.mark.anyio
async def test_ingest_and_the_publisher_carry_the_channel(running: Running) -> None:
    async with running() as (url, app):
        async with stream(url, "/events?channel=team.7.*") as (_, team):
            async with httpx.AsyncClient(base_url=url) as client:
                answer = await client.post(
                    "/events",
                    json=[
                        {"type": "A", "source": "s", "channel": "team.7.builds"},
                        {"type": "B", "source": "s", "channel": "bad..name"},
                        {"type": "C", "source": "s"},
                    ],
                )
                body = answer.json()
                assert (body["accepted"], [r["index"] for r in body["rejected"]]) == (2, [1])
            async with AsyncRemotePublisher(url, source="pub", channel="team.7.deploys") as pub:
                await pub.publish("D", {"n": 1})
                await pub.publish("E", {"n": 2}, channel="default")
                await pub.flush()
            got = await take(team, 2)
            assert [(m.event, m.json()["channel"]) for m in got] == [
                ("A", "team.7.builds"),
                ("D", "team.7.deploys"),
            ]
        rows = await app.state.journal.read_after(None, 10)
        assert [(r.event.type, r.event.channel) for r in rows] == [
            ("A", "team.7.builds"),
            ("C", "default"),
            ("D", "team.7.deploys"),
            ("E", "default"),
        ]
