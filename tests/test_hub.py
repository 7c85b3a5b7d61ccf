"""Hub: fan-out, filters, replay→live hand-off, resets, slow subscribers, heartbeats.

Runs against a real SQLiteJournal in tmp_path; events are appended straight to the
journal (the hub tails the journal and never talks to the batcher).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import pytest

from sse_batcher import (
    BatcherClosed,
    ConfigError,
    EncodedEvent,
    Event,
    Hub,
    QueueFull,
    SQLiteJournal,
)
from sse_batcher.batching._events import encode_data
from sse_batcher.service._hub import HEARTBEAT_MESSAGE, batch_types_for

pytestmark = pytest.mark.anyio


def encoded(type: str = "JOB_STARTED", source: str = "w1", persist: bool = True, **data: Any):
    event = Event.create(type, data, source=source)
    return EncodedEvent(event, encode_data(event.data), persist=persist)


def parse(chunk: bytes) -> list[dict[str, Any]]:
    """Split a chunk into SSE messages: {"id", "event", "data", "comment"} per message."""
    messages = []
    for block in chunk.split(b"\n\n"):
        if not block:
            continue
        message: dict[str, Any] = {}
        for line in block.split(b"\n"):
            field, _, value = line.partition(b":")
            if field == b"":
                message["comment"] = True
            else:
                message[field.decode()] = value.removeprefix(b" ").decode()
        if "data" in message:
            message["data"] = orjson.loads(message["data"])
        messages.append(message)
    return messages


async def collect(stream: AsyncIterator[bytes], count: int) -> list[dict[str, Any]]:
    """Read until ``count`` event messages arrived (heartbeats are skipped)."""
    got: list[dict[str, Any]] = []
    with anyio.fail_after(20):
        async for chunk in stream:
            got.extend(m for m in parse(chunk) if "event" in m)
            if len(got) >= count:
                break
    return got


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[SQLiteJournal]:
    async with SQLiteJournal(tmp_path / "hub.db") as journal:
        yield journal


async def append(journal: SQLiteJournal, events: Sequence[EncodedEvent]) -> None:
    await journal.append(events)


def test_batch_types_follow_the_convention() -> None:
    assert batch_types_for(["JOB_STARTED", "PING"]) == {
        "JOB_STARTED",
        "JOBS_BATCH_STARTED",
        "PING",
        "PING_BATCH",
    }


def test_invalid_configuration_is_refused(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "x.db")
    for kwargs in ({"buffer_size": 0}, {"heartbeat": 0}, {"max_subscribers": 0}):
        with pytest.raises(ConfigError):
            Hub(journal, **kwargs)


async def test_live_events_reach_every_subscriber_with_the_same_bytes(
    journal: SQLiteJournal,
) -> None:
    async with Hub(journal) as hub:
        async with hub.subscribe() as a, hub.subscribe() as b:
            await append(journal, [encoded(job_id=1), encoded("JOB_DONE", job_id=1)])
            first_a, first_b = await a.__anext__(), await b.__anext__()
            assert first_a == first_b  # encoded once, one chunk for the whole batch
            messages = parse(first_a)
            assert [m["event"] for m in messages] == ["JOB_STARTED", "JOB_DONE"]
            assert messages[0]["id"] == f"{journal.epoch}.1"
            assert messages[0]["data"]["data"] == {"job_id": 1}
            assert messages[0]["data"]["id"] == messages[0]["id"]
        assert hub.subscriber_count == 0
        assert hub.stats()["subscribed_total"] == 2


async def test_stream_only_events_carry_no_id(journal: SQLiteJournal) -> None:
    async with Hub(journal) as hub, hub.subscribe() as stream:
        await append(journal, [encoded("PROGRESS", persist=False, pct=5)])
        [message] = await collect(stream, 1)
        assert "id" not in message
        assert message["data"]["id"] is None


async def test_filters_match_types_their_batch_types_and_sources(journal: SQLiteJournal) -> None:
    async with Hub(journal) as hub:
        async with (
            hub.subscribe(types=["JOB_STARTED"]) as by_type,
            hub.subscribe(sources=["w2"]) as by_source,
        ):
            await append(
                journal,
                [
                    encoded("JOB_STARTED", "w1"),
                    encoded("JOB_DONE", "w1"),
                    encoded("JOBS_BATCH_STARTED", "w2"),
                    encoded("JOB_DONE", "w2"),
                ],
            )
            assert [(m["event"], m["data"]["source"]) for m in await collect(by_type, 2)] == [
                ("JOB_STARTED", "w1"),
                ("JOBS_BATCH_STARTED", "w2"),
            ]
            assert [m["event"] for m in await collect(by_source, 2)] == [
                "JOBS_BATCH_STARTED",
                "JOB_DONE",
            ]


async def test_replay_filters_too(journal: SQLiteJournal) -> None:
    await append(journal, [encoded("A"), encoded("B"), encoded("A")])
    async with Hub(journal) as hub, hub.subscribe(after_cursor="0", types=["A"]) as stream:
        assert [m["id"] for m in await collect(stream, 2)] == [
            f"{journal.epoch}.1",
            f"{journal.epoch}.3",
        ]


@pytest.mark.parametrize("buffer_size", [1000, 40])
async def test_replay_then_live_while_appending_has_no_gap_and_no_duplicate(
    journal: SQLiteJournal, buffer_size: int
) -> None:
    """Thousands of rows replayed while a writer keeps appending: each id exactly once.

    With a tiny buffer the live buffer overflows during the replay and is discarded
    (the replay must read again instead of disconnecting).
    """
    before, during = 3000, 1500
    for start in range(0, before, 500):
        await append(journal, [encoded(n=n) for n in range(start, start + 500)])
    done, some_written = anyio.Event(), anyio.Event()

    async def writer() -> None:
        for start in range(before, before + during, 15):
            await append(journal, [encoded(n=n) for n in range(start, start + 15)])
            if start - before >= 300:
                some_written.set()
            await anyio.lowlevel.checkpoint()
        done.set()

    async with Hub(journal, buffer_size=buffer_size) as hub:
        async with hub.subscribe(after_cursor=f"{journal.epoch}.0") as stream:
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                first = await collect(stream, 1)  # one replay page
                await some_written.wait()  # the live buffer filled meanwhile
                got = first + await collect(stream, before + during - len(first))
        assert done.is_set()
        assert [m["data"]["data"]["n"] for m in got] == list(range(before + during))
        assert [int(m["id"].split(".")[1]) for m in got] == list(range(1, before + during + 1))
        stats = hub.stats()
        assert stats["slow_disconnects"] == 0
        assert (stats["replay_overflows"] > 0) == (buffer_size < 100)


async def test_resume_from_the_middle_returns_only_later_events(journal: SQLiteJournal) -> None:
    await append(journal, [encoded(n=n) for n in range(10)])
    async with Hub(journal) as hub, hub.subscribe(after_cursor=f"{journal.epoch}.6") as stream:
        await append(journal, [encoded(n=10)])
        got = await collect(stream, 4)
        assert [m["data"]["data"]["n"] for m in got] == [6, 7, 8, 9, 10]


@pytest.mark.parametrize(
    ("cursor", "reason"), [("zzz.3", "epoch"), ("999", "future"), ("not-an-id", "invalid")]
)
async def test_an_unservable_cursor_gets_a_reset_then_live(
    journal: SQLiteJournal, cursor: str, reason: str
) -> None:
    await append(journal, [encoded(n=0), encoded(n=1)])
    async with Hub(journal) as hub, hub.subscribe(after_cursor=cursor) as stream:
        reset = parse(await stream.__anext__())
        assert reset == [
            {
                "event": "reset",
                "data": {
                    "reason": reason,
                    "last_event_id": cursor,
                    "oldest_id": f"{journal.epoch}.1",
                    "continue": "live",
                },
            }
        ]
        await append(journal, [encoded(n=2)])
        assert [m["data"]["data"]["n"] for m in await collect(stream, 1)] == [2]
    assert hub.stats()["resets"] == 1


async def test_on_reset_oldest_replays_everything(journal: SQLiteJournal) -> None:
    await append(journal, [encoded(n=0), encoded(n=1)])
    async with (
        Hub(journal) as hub,
        hub.subscribe(after_cursor="other.1", on_reset="oldest") as stream,
    ):
        got = await collect(stream, 3)
        assert got[0]["event"] == "reset"
        assert got[0]["data"]["continue"] == "oldest"
        assert [m["data"]["data"]["n"] for m in got[1:]] == [0, 1]


async def test_a_slow_subscriber_is_disconnected_and_the_others_get_everything(
    journal: SQLiteJournal,
) -> None:
    async with Hub(journal, buffer_size=10) as hub:
        async with hub.subscribe() as slow, hub.subscribe() as fast:
            got: list[dict[str, Any]] = []
            for n in range(30):
                await append(journal, [encoded(n=n)])
                got.extend(await collect(fast, 1))
            assert [m["data"]["data"]["n"] for m in got] == list(range(30))
            # The slow one never read: its buffer overflowed, it was dropped and its
            # iterator ends without yielding what it had buffered.
            with anyio.fail_after(5):
                assert [chunk async for chunk in slow] == []
            stats = hub.stats()
            assert stats["slow_disconnects"] == 1
            assert stats["subscribers"] == 1


async def test_a_write_larger_than_the_buffer_reaches_a_reader_that_keeps_up(
    journal: SQLiteJournal,
) -> None:
    async with Hub(journal, buffer_size=5) as hub, hub.subscribe() as stream:
        await append(journal, [encoded(n=n) for n in range(50)])  # one write, 10x the buffer
        got = await collect(stream, 50)
        assert [m["data"]["data"]["n"] for m in got] == list(range(50))
        assert hub.stats()["slow_disconnects"] == 0


async def test_heartbeats_are_comment_lines_when_idle(journal: SQLiteJournal) -> None:
    async with Hub(journal, heartbeat=0.05) as hub, hub.subscribe() as stream:
        with anyio.fail_after(5):
            assert await stream.__anext__() == HEARTBEAT_MESSAGE


async def test_max_subscribers_refuses_more(journal: SQLiteJournal) -> None:
    async with Hub(journal, max_subscribers=1) as hub:
        async with hub.subscribe():
            with pytest.raises(QueueFull):
                async with hub.subscribe():
                    pass  # pragma: no cover
        async with hub.subscribe():
            pass
        assert hub.stats()["refused_total"] == 1


async def test_closing_the_hub_ends_open_streams(journal: SQLiteJournal) -> None:
    hub = Hub(journal)
    async with hub, hub.subscribe() as stream:
        async with anyio.create_task_group() as tg:

            async def read_all() -> None:
                with anyio.fail_after(5):
                    assert [chunk async for chunk in stream] == []

            tg.start_soon(read_all)
            await anyio.wait_all_tasks_blocked()
            hub.close_streams()
    with pytest.raises(BatcherClosed):
        async with hub:
            pass  # pragma: no cover
    with pytest.raises(BatcherClosed):
        async with hub.subscribe():
            pass  # pragma: no cover
