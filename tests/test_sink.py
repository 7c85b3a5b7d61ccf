"""SinkSet: per-sink buffers and writer tasks, retry with backoff, memory budget, drain."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import anyio
import orjson
import pytest

from sse_batcher import BatcherClosed, ConfigError, Event, Position, Sink, SinkSet, StoredEvent
from sse_batcher.batching._sink import event_nbytes, is_error_event
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

FAST = {"retry_initial": 0.001, "retry_max": 0.01}


def stored(n: int, type: str = "JOB_DONE", source: str = "w", **data: Any) -> StoredEvent:
    payload = {"n": n, **data}
    return StoredEvent(
        id=f"e.{n}",
        position=Position(n),
        event=Event(type, source, payload, ts=1_700_000_000.0 + n),
        data_json=orjson.dumps(payload),
    )


def batches(count: int, size: int, start: int = 0) -> list[list[StoredEvent]]:
    return [[stored(start + b * size + i) for i in range(size)] for b in range(count)]


class RecordingSink:
    """A real (if trivial) sink: keeps what it was given. Fails ``fail_times`` first."""

    def __init__(self, name: str = "rec", fail_times: int = 0) -> None:
        self._name = name
        self.fail_times = fail_times
        self.calls = 0
        self.batches: list[list[str]] = []
        self.gate: anyio.Event | None = None
        self.entered = self.exited = False

    @property
    def name(self) -> str:
        return self._name

    async def __aenter__(self) -> Self:
        self.entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.exited = True

    async def write(self, events: Sequence[StoredEvent]) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_times > 0:
            self.fail_times -= 1
            raise OSError("disk on fire")
        self.batches.append([e.id or "" for e in events])

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls}

    @property
    def ids(self) -> list[str]:
        return [i for batch in self.batches for i in batch]


class BrokenEnterSink(RecordingSink):
    async def __aenter__(self) -> Self:
        raise OSError("cannot open")


def test_recording_sink_satisfies_protocol() -> None:
    assert isinstance(RecordingSink(), Sink)


async def test_sink_that_fails_for_a_while_recovers_with_nothing_lost() -> None:
    sink = RecordingSink(fail_times=7)
    offered = batches(20, 10)
    async with SinkSet([sink], **FAST) as sinks:
        for batch in offered:
            sinks.offer(batch)
        await wait_until(lambda: sinks.stats()["rec"]["written"] == 200)
        stats = sinks.stats()["rec"]
    assert sink.ids == [e.id for batch in offered for e in batch]  # all, once, in order
    assert stats["failures"] == 7
    assert stats["retries"] == 7
    assert stats["received"] == 200
    assert stats["dropped_overflow"] == stats["dropped_shutdown"] == 0
    assert stats["healthy"] is True and stats["last_error"] is None
    assert stats["buffered_events"] == 0 and stats["buffered_bytes"] == 0
    assert stats["sink_calls"] == sink.calls
    assert sink.entered and sink.exited


async def test_failing_sink_never_blocks_offer_or_other_sinks() -> None:
    broken = RecordingSink("broken", fail_times=10**9)
    healthy = RecordingSink("healthy")
    async with SinkSet([broken, healthy], drain_timeout=0.2, **FAST) as sinks:
        started = time.perf_counter()
        for batch in batches(50, 20):
            sinks.offer(batch)
        offer_seconds = time.perf_counter() - started
        await wait_until(lambda: len(healthy.ids) == 1000)
        await wait_until(lambda: sinks.stats()["broken"]["failures"] >= 3)
        assert sinks.stats()["broken"]["healthy"] is False
        assert "disk on fire" in sinks.stats()["broken"]["last_error"]
        closing = time.perf_counter()
    close_seconds = time.perf_counter() - closing
    stats = sinks.stats()
    assert offer_seconds < 1.0  # 1000 events offered with no sink ever awaited
    assert close_seconds < 2.0  # drain_timeout=0.2 bounds the wait for the broken sink
    assert stats["broken"]["dropped_shutdown"] == 1000
    assert stats["broken"]["written"] == 0
    assert stats["healthy"]["written"] == 1000 and stats["healthy"]["dropped_shutdown"] == 0


async def test_close_drains_everything_offered() -> None:
    sink = RecordingSink()
    async with SinkSet([sink]) as sinks:
        for batch in batches(100, 10):
            sinks.offer(batch)
    assert len(sink.ids) == 1000
    assert sinks.stats()["rec"]["dropped_shutdown"] == 0


async def test_backlog_is_written_coalesced_in_order() -> None:
    sink = RecordingSink()
    sink.gate = anyio.Event()
    async with SinkSet([sink]) as sinks:
        sinks.offer(batches(1, 5)[0])
        await wait_until(lambda: sink.calls == 1)  # the first write is in flight
        for batch in batches(6, 5, start=5):
            sinks.offer(batch)
        assert sinks.stats()["rec"]["buffered_events"] == 35
        sink.gate.set()
        await wait_until(lambda: len(sink.ids) == 35)
    assert [len(b) for b in sink.batches] == [5, 30]  # the backlog went as one write
    assert sink.ids == [f"e.{n}" for n in range(35)]


async def test_over_budget_sheds_oldest_of_the_laggard_and_keeps_errors() -> None:
    slow = RecordingSink("slow", fail_times=10**9)
    fast = RecordingSink("fast")
    one = event_nbytes(stored(0))
    budget = 60 * one
    async with SinkSet([slow, fast], max_buffer_bytes=budget, **FAST) as sinks:
        offered: list[StoredEvent] = []
        for n in range(300):
            event = stored(n, type="JOB_FAILED") if n % 50 == 0 else stored(n)
            offered.append(event)
            sinks.offer([event])
            assert sum(s["buffered_bytes"] for s in sinks.stats().values()) <= budget
            await anyio.lowlevel.checkpoint()
        await wait_until(lambda: len(fast.ids) == 300)
        stats = sinks.stats()["slow"]
        assert stats["dropped_overflow"] > 0
        assert stats["buffered_events"] + stats["dropped_overflow"] == 300
        slow.fail_times = 0  # recovers: what is still buffered gets written
        await wait_until(lambda: sinks.stats()["slow"]["buffered_events"] == 0)
    assert fast.ids == [e.id for e in offered]  # the healthy sink lost nothing
    assert sinks.stats()["fast"]["dropped_overflow"] == 0
    written = slow.ids
    assert written == sorted(written, key=lambda i: int(i.split(".")[1]))  # still in order
    errors = [e.id for e in offered if is_error_event(e.event)]
    assert set(errors) <= set(written)  # error events were shed last
    assert offered[-1].id in written  # the newest survive; the oldest plain ones went
    assert len(written) + sinks.stats()["slow"]["dropped_overflow"] == 300


async def test_offer_skips_stream_only_and_counts_after_close() -> None:
    sink = RecordingSink()
    stream_only = StoredEvent(None, None, Event("TICK", "w", {}), b"{}")
    async with SinkSet([sink]) as sinks:
        sinks.offer([stream_only, stored(1)])
        sinks.offer([stream_only])
        sinks.offer([])
    assert sink.ids == ["e.1"]
    sinks.offer([stored(2), stored(3)])  # after close: counted, never raised
    assert sinks.stats()["rec"]["dropped_closed"] == 2
    assert sinks.stats()["rec"]["received"] == 1
    with pytest.raises(BatcherClosed):
        async with sinks:
            pass


async def test_sink_that_cannot_open_fails_start_and_closes_the_others() -> None:
    first = RecordingSink("first")
    with pytest.raises(OSError, match="cannot open"):
        async with SinkSet([first, BrokenEnterSink("second")]):
            pass
    assert first.entered and first.exited


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unique"):
        SinkSet([RecordingSink("a"), RecordingSink("a")])
    with pytest.raises(ConfigError):
        SinkSet([RecordingSink()], max_buffer_bytes=0)
    with pytest.raises(ConfigError):
        SinkSet([RecordingSink()], retry_initial=1.0, retry_max=0.5)


def test_is_error_event() -> None:
    assert is_error_event(Event("JOB_FAILED", "w", {}))
    assert is_error_event(Event("WORKER_ERROR", "w", {}))
    assert is_error_event(Event("upload_failed", "w", {}))
    assert is_error_event(Event("LOG", "w", {"level": "ERROR"}))
    assert is_error_event(Event("LOG", "w", {"level": "critical"}))
    assert not is_error_event(Event("LOG", "w", {"level": "warning"}))
    assert not is_error_event(Event("JOB_DONE", "w", {"level": 3}))
