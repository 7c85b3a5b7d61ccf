"""RemotePublisher / AsyncRemotePublisher: batching, retries, fallback, spool, stats.

Error paths run against ``httpx.MockTransport`` (a scripted network); the real
server runs in the tests at the end of this file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_batcher import AsyncRemotePublisher, PublisherStats, RemotePublisher, in_publisher_context
from sse_batcher.publishing._model import encode_event
from sse_batcher.publishing._spool import Spool
from tests.waiting import wait_until_sync

URL = "http://publisher.test"


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while True:
            if condition():
                return
            await anyio.sleep(0.005)


class Server:
    """A scripted server: ``script`` decides each answer; accepted events are kept."""

    def __init__(
        self, script: Callable[[Server, httpx.Request, Any], httpx.Response | None] | None = None
    ) -> None:
        self.script = script
        self.lock = threading.Lock()
        self.requests: list[tuple[float, Any]] = []  # (monotonic time, parsed body)
        self.events: list[dict[str, Any]] = []
        self.seen_uids: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        with self.lock:
            self.requests.append((time.monotonic(), body))
        if self.script is not None:
            answer = self.script(self, request, body)
            if answer is not None:
                return answer
        return self.accept(body)

    def accept(self, body: Any, rejected: dict[int, str] | None = None) -> httpx.Response:
        entries = body["events"] if isinstance(body, dict) and "events" in body else [body]
        rejected = rejected or {}
        duplicates = 0
        with self.lock:
            for index, entry in enumerate(entries):
                if index in rejected:
                    continue
                if entry["uid"] in self.seen_uids:
                    duplicates += 1
                    continue
                self.seen_uids.add(entry["uid"])
                self.events.append(entry)
        return httpx.Response(
            202,
            json={
                "accepted": len(entries) - len(rejected) - duplicates,
                "rejected": [{"index": i, "error": e} for i, e in rejected.items()],
                "duplicates": duplicates,
            },
        )

    def numbers(self) -> list[int]:
        with self.lock:
            return [event["data"]["n"] for event in self.events]


def publisher(server: Server, tmp_path: Path, **kwargs: Any) -> RemotePublisher:
    options: dict[str, Any] = {
        "source": "tests",
        "spool_path": tmp_path / "spool.jsonl",
        "max_backoff": 0.01,
        "transport": httpx.MockTransport(server),
    }
    options.update(kwargs)
    return RemotePublisher(URL, **options)


# ---------------------------------------------------------------------------- batching


def test_batches_by_size_in_order_with_unique_uids(tmp_path: Path) -> None:
    server = Server()
    with publisher(server, tmp_path, flush_interval=60) as pub:
        for n in range(25):
            pub.publish("JOB_STARTED", {"n": n})
        # 20 go out on size alone; the last 5 wait for flush_interval (60 s) or close.
        wait_until_sync(lambda: len(server.events) == 20)
        assert len(server.requests) == 2
    assert server.numbers() == list(range(25))
    sizes = [len(body["events"]) for _, body in server.requests]
    assert sizes == [10, 10, 5]
    uids = [event["uid"] for event in server.events]
    assert len(set(uids)) == 25 and all(len(uid) == 32 for uid in uids)
    assert {event["source"] for event in server.events} == {"tests"}
    stats = pub.stats()
    assert (stats.sent, stats.batches, stats.requests, stats.buffered) == (25, 3, 3, 0)


def test_flush_interval_sends_a_partial_batch(tmp_path: Path) -> None:
    server = Server()
    with publisher(server, tmp_path, flush_interval=0.3) as pub:
        started = time.monotonic()
        pub.publish("A", {"n": 1})
        pub.publish("A", {"n": 2})
        wait_until_sync(lambda: len(server.requests) == 1)
        waited = server.requests[0][0] - started
        assert 0.25 <= waited < 5
        assert server.numbers() == [1, 2]


def test_flush_sends_now_and_waits(tmp_path: Path) -> None:
    server = Server()
    with publisher(server, tmp_path, flush_interval=60) as pub:
        pub.publish("A", {"n": 1}, source="other", ts=123.5)
        assert pub.flush(timeout=10)
        assert server.numbers() == [1]
        assert server.events[0]["source"] == "other" and server.events[0]["ts"] == 123.5


def test_default_source_is_hostname_pid(tmp_path: Path) -> None:
    server = Server()
    with publisher(server, tmp_path, source=None) as pub:
        pub.publish("A")
    assert server.events[0]["source"].endswith(f"-{os.getpid()}")
    assert server.events[0]["data"] == {}


# ---------------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.Response(500, json={"error": "boom"}),
        httpx.Response(502, text="bad gateway"),
    ],
    ids=["connect", "timeout", "500", "502"],
)
def test_retries_the_same_batch_in_order(tmp_path: Path, failure: Any) -> None:
    failures = [3]

    def script(server: Server, request: httpx.Request, body: Any) -> httpx.Response | None:
        if failures[0] > 0:
            failures[0] -= 1
            if isinstance(failure, Exception):
                raise failure
            return failure
        return None

    server = Server(script)
    with publisher(server, tmp_path) as pub:
        for n in range(15):
            pub.publish("A", {"n": n})
    assert server.numbers() == list(range(15))
    first_batch = [entry["uid"] for entry in server.requests[0][1]["events"]]
    # The retried request carries the same events with the same uids.
    assert [entry["uid"] for entry in server.requests[3][1]["events"]] == first_batch
    stats = pub.stats()
    assert stats.retries == 3 and stats.requests == 5 and stats.sent == 15
    assert stats.last_error is not None


def test_honours_retry_after(tmp_path: Path) -> None:
    def script(server: Server, request: httpx.Request, body: Any) -> httpx.Response | None:
        if len(server.requests) == 1:
            return httpx.Response(503, headers={"Retry-After": "0.4"}, json={"error": "full"})
        return None

    server = Server(script)
    with publisher(server, tmp_path, max_backoff=0.001) as pub:
        pub.publish("A", {"n": 1})
        assert pub.flush(timeout=10)
    (first, _), (second, _) = server.requests
    # max_backoff alone would retry within a millisecond.
    assert second - first >= 0.38
    assert pub.stats().last_error == "HTTP 503: full"


def test_one_batch_in_flight_at_a_time(tmp_path: Path) -> None:
    in_flight = [0]
    most = [0]

    def script(server: Server, request: httpx.Request, body: Any) -> httpx.Response | None:
        with server.lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.002)
        with server.lock:
            in_flight[0] -= 1
        return None

    server = Server(script)
    with publisher(server, tmp_path) as pub:
        for n in range(200):
            pub.publish("A", {"n": n})
    assert most[0] == 1
    assert server.numbers() == list(range(200))


# ------------------------------------------------------------------ fallback, 413, rejections


@pytest.mark.parametrize("status", [404, 405])
def test_falls_back_to_single_events_and_warns_once(
    tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    def script(server: Server, request: httpx.Request, body: Any) -> httpx.Response | None:
        if "events" in body:
            return httpx.Response(status)
        return None

    server = Server(script)
    with caplog.at_level(logging.WARNING, logger="sse_batcher.publisher"):
        with publisher(server, tmp_path, flush_interval=60) as pub:
            for n in range(5):
                pub.publish("A", {"n": n})
            assert pub.flush(timeout=10)
            for n in range(5, 12):
                pub.publish("A", {"n": n})
    assert server.numbers() == list(range(12))
    bodies = [body for _, body in server.requests]
    assert "events" in bodies[0]
    assert all("events" not in body for body in bodies[1:])  # single objects from then on
    assert len(bodies) == 1 + 12
    warnings = [r for r in caplog.records if "one event per request" in r.getMessage()]
    assert len(warnings) == 1
    stats = pub.stats()
    assert stats.fallbacks == 2 and stats.sent == 12 and stats.batches == 0


def test_413_splits_the_batch_then_rejects_a_single_event(tmp_path: Path) -> None:
    def script(server: Server, request: httpx.Request, body: Any) -> httpx.Response | None:
        entries = body["events"]
        if len(entries) > 3 or any(entry["data"].get("huge") for entry in entries):
            return httpx.Response(413, json={"error": "the body is larger than 300 bytes"})
        return None

    server = Server(script)
    with publisher(server, tmp_path, flush_interval=60) as pub:
        for n in range(10):
            pub.publish("A", {"n": n, "huge": n == 7})
    assert server.numbers() == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    stats = pub.stats()
    assert stats.rejected == 1 and stats.sent == 9
    assert stats.rejected_reasons == ("1 events: HTTP 413: the body is larger than 300 bytes",)


@pytest.mark.parametrize(
    ("status", "error"), [(400, "bad json"), (401, "missing bearer token"), (403, "invalid token")]
)
def test_refused_batches_are_recorded_not_retried(tmp_path: Path, status: int, error: str) -> None:
    server = Server(lambda s, r, b: httpx.Response(status, json={"error": error}))
    with publisher(server, tmp_path, flush_interval=60) as pub:
        for n in range(15):
            pub.publish("A", {"n": n})
    assert len(server.requests) == 2  # one per batch: no retry
    stats = pub.stats()
    assert stats.rejected == 15 and stats.retries == 0 and stats.sent == 0
    assert stats.rejected_reasons == (
        f"10 events: HTTP {status}: {error}",
        f"5 events: HTTP {status}: {error}",
    )


def test_per_entry_rejections_are_recorded_not_retried(tmp_path: Path) -> None:
    def script(server: Server, request: httpx.Request, body: Any) -> httpx.Response | None:
        bad = {
            i: "type must not be empty"
            for i, e in enumerate(body["events"])
            if e["data"]["n"] % 4 == 0
        }
        return server.accept(body, bad)

    server = Server(script)
    with publisher(server, tmp_path, flush_interval=60) as pub:
        for n in range(10):
            pub.publish("WIDGET", {"n": n})
    assert server.numbers() == [1, 2, 3, 5, 6, 7, 9]
    assert len(server.requests) == 1
    stats = pub.stats()
    assert stats.rejected == 3 and stats.sent == 7
    assert stats.rejected_reasons == ("WIDGET: type must not be empty",) * 3


def test_token_is_sent_as_bearer(tmp_path: Path) -> None:
    seen: list[str | None] = []

    def script(server: Server, request: httpx.Request, body: Any) -> httpx.Response | None:
        seen.append(request.headers.get("authorization"))
        assert request.url.path == "/events"
        return None

    with publisher(Server(script), tmp_path, token="s3cret") as pub:
        pub.publish("A")
    assert seen == ["Bearer s3cret"]


# ------------------------------------------------------------------ never raises / logging


def test_publish_never_raises(tmp_path: Path) -> None:
    server = Server()
    pub = publisher(server, tmp_path)
    pub.publish("", {"n": 1})
    pub.publish("A\nB", {"n": 2})
    pub.publish("A", {"n": object()})
    pub.publish("A", ["not", "an", "object"])  # type: ignore[arg-type]
    pub.publish("A", {"n": 3})
    pub.close()
    pub.publish("A", {"n": 4})
    assert server.numbers() == [3]
    stats = pub.stats()
    assert stats.rejected == 4 and stats.dropped == 1
    assert any("type must not be empty" in r for r in stats.rejected_reasons)
    with pytest.raises(Exception, match="closed"):
        pub.__enter__()


def test_logging_handler_does_not_feed_on_the_publishers_own_logs(tmp_path: Path) -> None:
    server = Server()
    pub = publisher(server, tmp_path, flush_interval=60)

    class Shipping(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            pub.publish("LOG", {"n": len(record.getMessage()), "msg": record.getMessage()})

    handler = Shipping(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # httpx/httpcore log every request at INFO/DEBUG
    try:
        logging.getLogger("app").info("hello")
        assert pub.flush(timeout=10)
        logging.getLogger("app").info("again")
        assert pub.flush(timeout=10)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        pub.close()
    assert [event["data"]["msg"] for event in server.events] == ["hello", "again"]
    assert not in_publisher_context()


# ---------------------------------------------------------------------------- spool


class Switch:
    """A server that refuses connections until switched on."""

    def __init__(self) -> None:
        self.up = threading.Event()

    def __call__(self, server: Server, request: httpx.Request, body: Any) -> httpx.Response | None:
        if not self.up.is_set():
            raise httpx.ConnectError("connection refused")
        return None


def test_spools_when_down_and_sends_the_spool_first(tmp_path: Path) -> None:
    switch = Switch()
    server = Server(switch)
    spool_file = tmp_path / "spool.jsonl"
    with publisher(server, tmp_path, spool_after=0.2, flush_interval=0.05) as pub:
        for n in range(30):
            pub.publish("A", {"n": n})
        wait_until_sync(lambda: pub.stats().spooled == 30)
        assert len(spool_file.read_bytes().splitlines()) == 30
        for n in range(30, 35):  # while down: spooled after flush_interval
            pub.publish("A", {"n": n})
        wait_until_sync(lambda: pub.stats().spooled == 35)
        switch.up.set()
        for n in range(35, 40):
            pub.publish("A", {"n": n})
        assert pub.flush(timeout=10)
        wait_until_sync(lambda: pub.stats().spool_pending == 0)
    assert server.numbers() == list(range(40))
    stats = pub.stats()
    # 35..39 may be spooled too: the publisher learns the server is back on its next try.
    assert stats.spooled >= 35 and stats.unspooled == stats.spooled
    assert (stats.sent, stats.buffered, stats.dropped) == (40, 0, 0)
    assert not spool_file.exists()  # removed when empty on close


def test_a_new_process_sends_a_leftover_spool_first(tmp_path: Path) -> None:
    switch = Switch()
    server = Server(switch)
    first = publisher(server, tmp_path, spool_after=0.1)
    for n in range(12):
        first.publish("A", {"n": n})
    first.close()  # down: waits spool_after, spools, returns
    assert first.stats().spool_pending == 12
    assert len((tmp_path / "spool.jsonl").read_bytes().splitlines()) == 12
    switch.up.set()
    with publisher(server, tmp_path) as second:
        second.publish("A", {"n": 12})
    assert server.numbers() == list(range(13))
    assert second.stats().unspooled == 12
    assert not (tmp_path / "spool.jsonl").exists()


def test_without_spool_events_are_dropped_after_spool_after(tmp_path: Path) -> None:
    server = Server(Switch())
    pub = publisher(server, tmp_path, spool=False, spool_after=0.2)
    for n in range(15):
        pub.publish("A", {"n": n})
    assert pub.flush(timeout=10)
    pub.close()
    stats = pub.stats()
    assert stats.dropped == 15 and stats.sent == 0 and stats.spooled == 0
    assert stats.last_error is not None and "unreachable" in stats.last_error
    assert not (tmp_path / "spool.jsonl").exists()


def test_full_buffer_goes_to_the_spool_and_keeps_order(tmp_path: Path) -> None:
    gate = threading.Event()

    def script(server: Server, request: httpx.Request, body: Any) -> httpx.Response | None:
        gate.wait(10)  # a slow server: the sender is stuck in its first request
        return None

    server = Server(script)
    with publisher(server, tmp_path, max_buffer_events=50) as pub:
        for n in range(500):
            pub.publish("A", {"n": n})
        assert pub.stats().spooled >= 450
        assert pub.stats().buffered == 500
        gate.set()
    assert server.numbers() == list(range(500))
    assert pub.stats().dropped == 0


def test_full_buffer_without_spool_drops_new_events(tmp_path: Path) -> None:
    gate = threading.Event()
    server = Server(lambda s, r, b: None if gate.wait(10) else httpx.Response(500))
    with publisher(server, tmp_path, spool=False, max_buffer_events=50) as pub:
        for n in range(100):
            pub.publish("A", {"n": n})
        assert pub.stats().dropped == 50
        gate.set()
    assert server.numbers() == list(range(50))


def test_close_timeout_spools_what_is_left(tmp_path: Path) -> None:
    server = Server(Switch())
    pub = publisher(server, tmp_path, spool_after=60)
    for n in range(5):
        pub.publish("A", {"n": n})
    started = time.monotonic()
    pub.close(timeout=0.3)
    assert time.monotonic() - started < 5
    assert pub.stats().spool_pending == 5


def test_two_publishers_take_separate_spool_slots(tmp_path: Path) -> None:
    server = Server(Switch())
    one = publisher(server, tmp_path, spool_after=0, flush_interval=0.05)
    two = publisher(server, tmp_path, spool_after=0, flush_interval=0.05)
    try:
        one.publish("A", {"n": 1})
        two.publish("A", {"n": 2})
        wait_until_sync(lambda: one.stats().spooled == 1 and two.stats().spooled == 1)
        assert {one.spool_path, two.spool_path} == {
            str(tmp_path / "spool.jsonl"),
            str(tmp_path / "spool-2.jsonl"),
        }
    finally:
        one.close(timeout=0)
        two.close(timeout=0)


def test_spool_repairs_a_torn_tail_and_keeps_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    lines = [encode_event("A", {"n": n}, "src", 1.0, f"u{n}") for n in range(5)]
    spool = Spool(path)
    spool.open()
    spool.append(lines)
    spool.ack(2)
    spool.close()
    with path.open("ab") as file:  # a crash in the middle of the next write
        file.write(b'{"type":"A","sou')
    again = Spool(path)
    again.open()
    assert again.pending == 3
    assert again.read(10) == lines[2:]
    again.ack(3)
    assert path.stat().st_size == 0  # fully acknowledged: truncated
    again.append(lines[:1])
    assert again.read(5) == lines[:1]
    again.ack(1)
    again.close()
    assert not path.exists()


def test_spool_offset_past_the_end_resends_everything(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"type":"A"}\n{"type":"B"}\n')
    Path(f"{path}.offset").write_bytes(b"%020d\n" % 999)
    spool = Spool(path)
    spool.open()
    try:
        assert spool.pending == 2
    finally:
        spool.close()


def test_damaged_spool_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    good = [encode_event("A", {"n": n}, "src", 1.0, f"u{n}") for n in range(3)]
    path.write_bytes(good[0] + b"\n" + b"garbage\n" + good[1] + b"\n" + good[2] + b"\n")
    server = Server()
    with publisher(server, tmp_path) as pub:
        pass
    assert server.numbers() == [0, 1, 2]
    assert pub.stats().dropped == 1


# ---------------------------------------------------------------------------- stats


def test_stats_is_a_frozen_dataclass() -> None:
    stats = PublisherStats(sent=3, rejected_reasons=("x",))
    with pytest.raises(AttributeError):
        stats.sent = 4  # type: ignore[misc]
    assert stats.as_dict()["sent"] == 3 and stats.as_dict()["rejected_reasons"] == ["x"]


# ---------------------------------------------------------------------------- async twin


def apublisher(server: Server, tmp_path: Path, **kwargs: Any) -> AsyncRemotePublisher:
    options: dict[str, Any] = {
        "source": "tests",
        "spool_path": tmp_path / "spool.jsonl",
        "max_backoff": 0.01,
        "transport": httpx.MockTransport(server),
    }
    options.update(kwargs)
    return AsyncRemotePublisher(URL, **options)


@pytest.mark.anyio
async def test_async_batches_retries_and_closes(tmp_path: Path) -> None:
    failures = [2]

    def script(server: Server, request: httpx.Request, body: Any) -> httpx.Response | None:
        if failures[0]:
            failures[0] -= 1
            return httpx.Response(503, headers={"Retry-After": "0"})
        return None

    server = Server(script)
    async with apublisher(server, tmp_path, flush_interval=60) as pub:
        for n in range(23):
            await pub.publish("A", {"n": n})
        pub.publish_nowait("A", {"n": 23})
        await pub.flush()
        assert server.numbers() == list(range(24))
        pub.publish_nowait("A", {"n": 24})
    assert server.numbers() == list(range(25))
    stats = pub.stats()
    assert stats.retries == 2 and stats.batches == 4 and stats.sent == 25


@pytest.mark.anyio
async def test_async_flush_interval(tmp_path: Path) -> None:
    server = Server()
    async with apublisher(server, tmp_path, flush_interval=0.2) as pub:
        started = time.monotonic()
        pub.publish_nowait("A", {"n": 1})
        await until(lambda: bool(server.requests))
        assert server.requests[0][0] - started >= 0.18


@pytest.mark.anyio
async def test_async_spools_and_recovers(tmp_path: Path) -> None:
    switch = Switch()
    server = Server(switch)
    async with apublisher(server, tmp_path, spool_after=0.1, flush_interval=0.05) as pub:
        for n in range(20):
            await pub.publish("A", {"n": n})
        await until(lambda: pub.stats().spooled >= 20)
        switch.up.set()
        await pub.publish("A", {"n": 20})
        await pub.flush()
        await until(lambda: pub.stats().spool_pending == 0)
    assert server.numbers() == list(range(21))
    assert pub.stats().unspooled == pub.stats().spooled >= 20


@pytest.mark.anyio
async def test_async_fallback_and_overflow_spill(tmp_path: Path) -> None:
    def script(server: Server, request: httpx.Request, body: Any) -> httpx.Response | None:
        return httpx.Response(404) if "events" in body else None

    server = Server(script)
    async with apublisher(server, tmp_path, max_buffer_events=20, max_batch_size=5) as pub:
        for n in range(60):
            pub.publish_nowait("A", {"n": n})
        for n in range(60, 100):
            await pub.publish("A", {"n": n})
    assert server.numbers() == list(range(100))
    assert pub.stats().spooled > 0 and pub.stats().fallbacks > 0


@pytest.mark.anyio
async def test_async_aclose_timeout_spools_and_refuses_reuse(tmp_path: Path) -> None:
    server = Server(Switch())
    pub = apublisher(server, tmp_path, spool_after=60)
    async with pub:
        pub.publish_nowait("A", {"n": 1})
        await pub.aclose(timeout=0.2)
        assert pub.stats().spool_pending == 1
    with pytest.raises(Exception, match="closed"):
        async with pub:
            pass


# ---------------------------------------------------------------------------- real server


def history_members(
    url: str, expected: int, timeout: float = 30.0, token: str | None = None
) -> list[dict[str, Any]]:
    """Every member event the server stored, batch events expanded, in journal order.

    Polls until ``expected`` members are there (the server batches for its window).
    """
    deadline = time.monotonic() + timeout
    while True:
        members: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params = {"limit": "1000", **({"after": after} if after else {})}
            headers = {"Authorization": f"Bearer {token}"} if token else None
            page = httpx.get(
                f"{url}/events/history", params=params, headers=headers, timeout=10
            ).json()
            for event in page["events"]:
                data = event["data"]
                items = [i["data"] for i in data["items"]] if "batch_count" in data else [data]
                members.extend({"source": event["source"], **item} for item in items)
            if not page["more"]:
                break
            after = page["next"]
        if len(members) >= expected or time.monotonic() > deadline:
            return members
        time.sleep(0.05)


def test_ten_thousand_events_from_four_threads_arrive_complete_in_order(tmp_path: Path) -> None:
    from tests.servers import ServerProcess

    per_thread = 2_500
    with ServerProcess(["--db", str(tmp_path / "e.db"), "--window-ms", "20"]) as server:
        with RemotePublisher(server.url, spool_path=tmp_path / "spool.jsonl") as pub:

            def produce(thread: int) -> None:
                for n in range(per_thread):
                    pub.publish("TICK", {"thread": thread, "n": n}, source=f"t{thread}")

            threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        members = history_members(server.url, 4 * per_thread)
    stats = pub.stats()
    assert stats.sent == 4 * per_thread and stats.rejected == 0 and stats.dropped == 0
    assert len(members) == 4 * per_thread
    for k in range(4):
        assert [m["n"] for m in members if m["thread"] == k] == list(range(per_thread))
        assert {m["source"] for m in members if m["thread"] == k} == {f"t{k}"}


def test_server_restart_mid_stream_spools_and_delivers_once(tmp_path: Path) -> None:
    from tests.servers import ServerProcess

    db = str(tmp_path / "e.db")
    produced = [0]
    finish = threading.Event()
    first = ServerProcess(["--db", db, "--window-ms", "20"])
    with first:
        pub = RemotePublisher(
            first.url,
            source="restart",
            spool_path=tmp_path / "spool.jsonl",
            spool_after=0.3,
            flush_interval=0.05,
            max_backoff=0.2,
            timeout=2.0,
        )

        def produce() -> None:
            n = 0
            while not finish.is_set() or n < 1_000:
                pub.publish("TICK", {"n": n})
                n += 1
                produced[0] = n
                if n % 10 == 0:
                    time.sleep(0.001)  # pacing: a worker, not a flood

        producer = threading.Thread(target=produce)
        producer.start()
        wait_until_sync(lambda: pub.stats().sent >= 500, within=30)
        first.stop()  # SIGTERM with requests in flight
        wait_until_sync(lambda: pub.stats().spooled > 0, within=30)
    spooled_while_down = pub.stats().spooled
    second = ServerProcess(["--db", db, "--window-ms", "20", "--port", str(first.port)])
    second.url = first.url  # the same address: the publisher knows no other
    with second:
        wait_until_sync(lambda: pub.stats().unspooled >= spooled_while_down, within=30)
        finish.set()
        producer.join()
        pub.close()
        total = produced[0]
        members = history_members(second.url, total)
    stats = pub.stats()
    numbers = [m["n"] for m in members]
    assert sorted(numbers) == list(range(total))  # complete, none stored twice
    assert numbers == list(range(total))  # and in order
    assert stats.spooled > 0 and stats.unspooled == stats.spooled
    assert stats.retries > 0 and stats.dropped == 0 and stats.rejected == 0
    assert stats.sent == total
    assert not (tmp_path / "spool.jsonl").exists()


def test_leftover_spool_is_sent_by_the_next_process(tmp_path: Path) -> None:
    from tests.conftest import free_port
    from tests.servers import ServerProcess

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spool_file = tmp_path / "spool.jsonl"
    dead = RemotePublisher(url, source="leftover", spool_path=spool_file, spool_after=0.1)
    for n in range(25):
        dead.publish("TICK", {"n": n})
    dead.close()  # nobody listens: spooled
    assert dead.stats().spool_pending == 25 and spool_file.exists()
    server = ServerProcess(
        ["--db", str(tmp_path / "e.db"), "--window-ms", "20", "--port", str(port)]
    )
    server.url = url  # serve on the port the spooled publisher tried
    with server:
        with RemotePublisher(url, source="leftover", spool_path=spool_file) as pub:
            pub.publish("TICK", {"n": 25})
        members = history_members(url, 26)
    assert [m["n"] for m in members] == list(range(26))
    assert pub.stats().unspooled == 25
    assert not spool_file.exists()


def test_wrong_token_and_oversized_batches_against_the_real_server(tmp_path: Path) -> None:
    from tests.servers import ServerProcess

    args = ["--db", str(tmp_path / "e.db"), "--window-ms", "20", "--token", "right"]
    with ServerProcess(args) as server:
        with RemotePublisher(server.url, token="wrong", spool_path=tmp_path / "s1") as denied:
            for n in range(15):
                denied.publish("TICK", {"n": n})
        stats = denied.stats()
        assert stats.rejected == 15 and stats.retries == 0 and stats.requests == 2
        assert "HTTP 403" in stats.rejected_reasons[0]
        # 20 events of 60 KiB exceed the server's 1 MiB body limit: 413, split, delivered.
        blob = "x" * 60_000
        with RemotePublisher(
            server.url, token="right", max_batch_size=20, spool_path=tmp_path / "s2"
        ) as pub:
            for n in range(20):
                pub.publish("BIG", {"n": n, "blob": blob})
        members = history_members(server.url, 20, token="right")
    assert [m["n"] for m in members] == list(range(20))
    assert pub.stats().requests == 3 and pub.stats().sent == 20


@pytest.mark.anyio
async def test_a_server_without_the_batch_route_gets_single_events(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.servers import serve_app

    stored: list[dict[str, Any]] = []

    async def single(request: Request) -> JSONResponse:
        body = await request.json()
        if "events" in body:  # an older server: no batch ingest on this route
            return JSONResponse({"error": "not found"}, status_code=404)
        stored.append(body)
        return JSONResponse({"ok": True}, status_code=201)

    app = Starlette(routes=[Route("/events", single, methods=["POST"])])
    async with serve_app(app) as url:
        async with AsyncRemotePublisher(url, source="old", spool_path=tmp_path / "s") as pub:
            for n in range(25):
                await pub.publish("TICK", {"n": n})
    assert [event["data"]["n"] for event in stored] == list(range(25))
    stats = pub.stats()
    assert stats.sent == 25 and stats.requests == 26 and stats.fallbacks == 3


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 5)),
            st.tuples(st.just("ack"), st.integers(1, 4)),
            st.tuples(st.just("reopen"), st.just(0)),
        ),
        max_size=30,
    )
)
def test_spool_is_a_durable_fifo(operations: list[tuple[str, int]]) -> None:
    """Whatever mix of appends, acknowledgements and reopenings: pending = unacked, in order."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "s.jsonl"
        spool = Spool(path)
        spool.open()
        model: list[bytes] = []
        counter = 0
        try:
            for name, count in operations:
                if name == "append":
                    lines = [
                        encode_event("A", {"n": counter + i}, "s", 1.0, "u") for i in range(count)
                    ]
                    counter += count
                    spool.append(lines)
                    model.extend(lines)
                elif name == "ack":
                    spool.ack(count)
                    del model[:count]
                else:
                    spool.close()
                    spool = Spool(path)
                    spool.open()
                assert spool.pending == len(model)
                assert spool.read(len(model) + 1) == model
        finally:
            spool.close()
        assert path.exists() == bool(model)
