"""RedisJournal against a real Redis: append/read/resume, epochs, retention, uids,
stream-only events over pub/sub, two nodes on one stream, and a Redis restart."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import anyio
import pytest
import redis

from sse_batcher import (
    BatcherClosed,
    ConfigError,
    EncodedEvent,
    Event,
    InvalidCursor,
    Journal,
    JournalUnavailable,
    Position,
    RedisJournal,
    StoredEvent,
)
from sse_batcher.batching._events import encode_data
from sse_batcher.batching._journal import parse_event_id
from tests.conftest import free_port
from tests.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards, pass or fail."""
    name = f"sse_batcher_test:{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        delete_prefix(redis_url, name)


def enc(
    type_: str = "JOB_STARTED",
    n: int = 0,
    *,
    persist: bool = True,
    uids: tuple[str, ...] = (),
    source: str = "worker-1",
) -> EncodedEvent:
    data = {"job_id": n, "note": "é\n"}
    return EncodedEvent(
        Event(type_, source, data, ts=1_700_000_000.25 + n), encode_data(data), persist, uids
    )


class Collector:
    """A tail listener that keeps everything it is given."""

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []

    def __call__(self, batch: Sequence[StoredEvent]) -> None:
        self.events.extend(batch)

    @property
    def stored(self) -> list[StoredEvent]:
        return [e for e in self.events if e.id is not None]

    @property
    def live(self) -> list[StoredEvent]:
        return [e for e in self.events if e.id is None]


@pytest.fixture
async def journal(redis_url: str, prefix: str) -> AsyncIterator[RedisJournal]:
    async with RedisJournal(redis_url, prefix=prefix, block_ms=200) as j:
        yield j


# -- append, read, resume ------------------------------------------------------------


async def test_append_read_and_resume(journal: RedisJournal) -> None:
    assert isinstance(journal, Journal)
    batch = [enc(n=1, uids=("u1",)), enc("JOB_LOG", 2, persist=False), enc(n=3), enc(n=4)]
    stored = await journal.append(batch)

    assert [s.event for s in stored] == [e.event for e in batch]
    assert stored[1].id is None and stored[1].position is None
    durable = [s for s in stored if s.id is not None]
    positions = [s.position for s in durable if s.position is not None]
    assert len(positions) == 3 and positions == sorted(set(positions))
    for s in durable:
        assert s.position is not None
        assert s.id == f"{journal.epoch}.{s.position.major}-{s.position.minor}"
        assert parse_event_id(s.id, two_part=True) == (journal.epoch, s.position)

    read = await journal.read_after(None, 100)
    assert [(r.id, r.event, r.data_json) for r in read] == [
        (s.id, s.event, s.data_json) for s in durable
    ]
    assert await journal.read_after(durable[0].position, 100) == read[1:]
    assert await journal.read_after(durable[0].position, 1) == read[1:2]
    assert await journal.read_after(None, 0) == []
    assert await journal.newest_id() == durable[-1].id

    first = durable[0]
    assert first.id is not None and first.position is not None
    resume = await journal.resume(first.id)
    assert (resume.after, resume.reset, resume.oldest_id) == (first.position, None, first.id)
    bare = f"{first.position.major}-{first.position.minor}"
    assert (await journal.resume(bare)).after == first.position
    # A bare "42" is the position 42-0 of this epoch: before everything, nothing trimmed.
    resume = await journal.resume("42")
    assert (resume.after, resume.reset) == (Position(42, 0), None)
    assert await journal.read_after(resume.after, 10) == read
    with pytest.raises(InvalidCursor):
        await journal.resume("not an id")


async def test_empty_journal(journal: RedisJournal) -> None:
    assert await journal.newest_id() is None
    assert await journal.read_after(None, 10) == []
    assert await journal.append([]) == []
    resume = await journal.resume(f"{journal.epoch}.0-0")
    assert (resume.after, resume.reset, resume.oldest_id) == (Position(0, 0), None, None)
    assert (await journal.resume(f"{journal.epoch}.5-0")).reset == "future"


async def test_future_and_foreign_epoch(journal: RedisJournal) -> None:
    [stored] = await journal.append([enc()])
    assert stored.position is not None
    ahead = f"{journal.epoch}.{stored.position.major + 1000}-0"
    resume = await journal.resume(ahead)
    assert (resume.after, resume.reset, resume.oldest_id) == (None, "future", stored.id)
    resume = await journal.resume(f"zz99.{stored.position.major}-0")
    assert (resume.after, resume.reset, resume.oldest_id) == (None, "epoch", stored.id)


async def test_concurrent_batches_land_whole(journal: RedisJournal) -> None:
    batches = [[enc(f"T{b}", n) for n in range(60)] for b in range(4)]
    async with anyio.create_task_group() as tg:
        for batch in batches:
            tg.start_soon(journal.append, batch)
    types = [e.event.type for e in await journal.read_after(None, 1000)]
    assert len(types) == 240
    # MULTI/EXEC: each batch's entries are contiguous in the stream, never interleaved.
    runs = [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]
    assert sorted(runs) == ["T0", "T1", "T2", "T3"]


# -- epoch ------------------------------------------------------------------------------


async def test_epoch_is_shared_and_changes_when_the_stream_is_recreated(
    redis_url: str, prefix: str
) -> None:
    async with (
        RedisJournal(redis_url, prefix=prefix, block_ms=200) as a,
        RedisJournal(redis_url, prefix=prefix, block_ms=200) as b,
    ):
        assert a.epoch == b.epoch
        old_epoch = a.epoch
        tail = Collector()
        async with anyio.create_task_group() as tg:
            await tg.start(b.run_tail, tail)
            [old] = await a.append([enc(n=1)])
            await wait_until(lambda: len(tail.stored) == 1)
            assert old.id is not None

            # The stream disappears but the epoch key survives (DEL, eviction): the
            # next append must not write into a new stream under the old epoch.
            client = redis.Redis.from_url(redis_url)
            client.delete(f"{prefix}:events")
            client.close()
            new = await a.append([enc(n=2), enc(n=3)])
            assert a.epoch != old_epoch
            assert all(s.id is not None and s.id.startswith(f"{a.epoch}.") for s in new)
            await wait_until(lambda: len(tail.stored) == 3)
            assert [s.id for s in tail.stored] == [old.id] + [s.id for s in new]
            assert b.epoch == a.epoch
            assert b.stats()["epoch_changes"] == 1

            resume = await b.resume(old.id)
            assert (resume.reset, resume.oldest_id) == ("epoch", new[0].id)
            new_epoch = a.epoch
            tg.cancel_scope.cancel()

    # A later journal on the same prefix keeps the current epoch.
    async with RedisJournal(redis_url, prefix=prefix) as c:
        assert c.epoch == new_epoch
        assert new[-1].id is not None
        assert (await c.resume(new[-1].id)).reset is None


async def test_stream_lost_with_its_epoch_gives_reset_before_any_append(
    journal: RedisJournal, redis_url: str, prefix: str
) -> None:
    [old] = await journal.append([enc()])
    client = redis.Redis.from_url(redis_url)
    client.delete(f"{prefix}:events", f"{prefix}:epoch")  # what FLUSHDB would do
    client.close()
    assert old.id is not None
    resume = await journal.resume(old.id)
    assert (resume.reset, resume.oldest_id) == ("epoch", None)
    assert old.id.split(".")[0] != journal.epoch


# -- retention ------------------------------------------------------------------------


async def test_trim_by_age_and_resume_reports_trimmed(redis_url: str, prefix: str) -> None:
    now = [0.0]
    async with RedisJournal(redis_url, prefix=prefix, clock=lambda: now[0]) as journal:
        old = await journal.append([enc(n=n) for n in range(5)])
        now[0] = 2e9  # far after every entry id (ids carry Redis's clock, in ms)
        assert await journal.cleanup() == 5
        assert await journal.read_after(None, 10) == []
        first, last = old[0].id, old[-1].id
        assert first is not None and last is not None
        assert (await journal.resume(first)).reset == "trimmed"
        # The newest id was delivered: nothing after it is missing.
        resume = await journal.resume(last)
        assert (resume.after, resume.reset) == (old[-1].position, None)

        now[0] = 0.0
        new = await journal.append([enc(n=9)])
        resume = await journal.resume(first)
        assert (resume.after, resume.reset, resume.oldest_id) == (None, "trimmed", new[0].id)
        assert journal.stats()["rows_deleted"] == 5


async def test_maxlen_trims_approximately(redis_url: str, prefix: str) -> None:
    async with RedisJournal(redis_url, prefix=prefix, maxlen=10) as journal:
        stored = []
        for b in range(5):
            stored += await journal.append([enc(n=b * 100 + n) for n in range(100)])
        kept = await journal.read_after(None, 1000)
        assert 10 <= len(kept) < 500
        assert [k.id for k in kept] == [s.id for s in stored[-len(kept) :]]
        assert stored[0].id is not None
        resume = await journal.resume(stored[0].id)
        assert (resume.reset, resume.oldest_id) == ("trimmed", kept[0].id)
        last_trimmed = stored[-len(kept) - 2].id
        assert last_trimmed is not None
        assert (await journal.resume(last_trimmed)).reset == "trimmed"


async def test_uids(redis_url: str, prefix: str) -> None:
    now = [1000.0]
    async with RedisJournal(redis_url, prefix=prefix, clock=lambda: now[0]) as journal:
        await journal.append([enc(uids=("a", "b")), enc(uids=("c",), persist=False)])
        now[0] = 1010.0
        await journal.append([enc(uids=("d",))])
        assert await journal.recent_uids(60) == {"a", "b", "d"}
        assert await journal.recent_uids(5) == {"d"}
        now[0] = 1000.0 + 3600 + 5  # uids are kept one hour, as SQLiteJournal does
        await journal.cleanup()
        assert await journal.recent_uids(1e9) == {"d"}
        assert journal.stats()["uids_deleted"] == 2


# -- tail: two nodes, stream-only events ------------------------------------------------


async def test_two_nodes_tail_in_stream_order_with_the_same_ids(
    redis_url: str, prefix: str
) -> None:
    async with (
        RedisJournal(redis_url, prefix=prefix, block_ms=200) as a,
        RedisJournal(redis_url, prefix=prefix, block_ms=200) as b,
    ):
        before = await a.append([enc(n=-1)])  # appended before the tails start: not tailed
        tail_a, tail_b = Collector(), Collector()
        async with anyio.create_task_group() as tg:
            await tg.start(a.run_tail, tail_a)
            await tg.start(b.run_tail, tail_b)
            appended: list[StoredEvent] = []
            for n in range(20):
                node = a if n % 3 else b
                appended += await node.append([enc(n=n * 10 + i) for i in range(10)])
            await wait_until(lambda: len(tail_a.stored) == len(tail_b.stored) == 200)
            expected = [(s.id, s.event, s.data_json) for s in appended]
            assert [(s.id, s.event, s.data_json) for s in tail_a.stored] == expected
            assert [(s.id, s.event, s.data_json) for s in tail_b.stored] == expected
            assert before[0].id not in {s.id for s in tail_b.events}
            assert b.stats()["tail_delivered"] == 200
            tg.cancel_scope.cancel()


async def test_stream_only_events_reach_every_node_and_are_not_kept(
    redis_url: str, prefix: str
) -> None:
    async with (
        RedisJournal(redis_url, prefix=prefix, block_ms=200) as a,
        RedisJournal(redis_url, prefix=prefix, block_ms=200) as b,
    ):
        tail_a, tail_b = Collector(), Collector()
        async with anyio.create_task_group() as tg:
            await tg.start(a.run_tail, tail_a)
            await tg.start(b.run_tail, tail_b)
            batch = [enc("PROGRESS", 1, persist=False), enc(n=2), enc("PROGRESS", 3, persist=False)]
            await a.append(batch)
            for tail in (tail_a, tail_b):
                await wait_until(lambda tail=tail: len(tail.events) == 3)  # type: ignore[misc]
                assert [e.event for e in tail.live] == [batch[0].event, batch[2].event]
                assert [e.data_json for e in tail.live] == [batch[0].data_json, batch[2].data_json]
                assert [e.event for e in tail.stored] == [batch[1].event]
            assert [e.event for e in await b.read_after(None, 10)] == [batch[1].event]
            assert a.stats()["stream_only"] == 2 and b.stats()["live_received"] == 2
            tg.cancel_scope.cancel()


async def test_channels_survive_the_stream_the_tail_and_the_live_channel(
    redis_url: str, prefix: str
) -> None:
    def on(channel: str, n: int, *, persist: bool = True) -> EncodedEvent:
        payload = {"job_id": n}
        event = Event("JOB_STARTED", "w", payload, ts=float(n), channel=channel)
        return EncodedEvent(event, encode_data(payload), persist=persist)

    batch = [on("user.1.jobs", 1), on("default", 2), on("user.2", 3, persist=False)]
    async with (
        RedisJournal(redis_url, prefix=prefix, block_ms=200) as a,
        RedisJournal(redis_url, prefix=prefix, block_ms=200) as b,
    ):
        tail = Collector()
        async with anyio.create_task_group() as tg:
            await tg.start(b.run_tail, tail)
            await a.append(batch)
            await wait_until(lambda: len(tail.events) == 3)
            assert sorted(e.event.channel for e in tail.events) == [
                "default",
                "user.1.jobs",
                "user.2",
            ]
            tg.cancel_scope.cancel()
        stored = await b.read_after(None, 10)
    assert [e.event for e in stored] == [batch[0].event, batch[1].event]


async def test_failing_listener_does_not_stop_the_tail(journal: RedisJournal) -> None:
    seen: list[StoredEvent] = []

    def listener(batch: Sequence[StoredEvent]) -> None:
        seen.extend(batch)
        if len(seen) == 1:
            raise RuntimeError("listener bug")

    async with anyio.create_task_group() as tg:
        await tg.start(journal.run_tail, listener)
        await journal.append([enc(n=1)])
        await wait_until(lambda: len(seen) == 1)
        await journal.append([enc(n=2)])
        await wait_until(lambda: len(seen) == 2)
        assert journal.stats()["listener_errors"] == 1
        tg.cancel_scope.cancel()


async def test_run_tail_returns_when_the_journal_closes(redis_url: str, prefix: str) -> None:
    journal = RedisJournal(redis_url, prefix=prefix, block_ms=200)
    returned = anyio.Event()

    async def tail(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        await journal.run_tail(Collector(), task_status=task_status)
        returned.set()

    async with anyio.create_task_group() as tg:
        async with journal:
            await tg.start(tail)
            assert journal.stats()["listeners"] == 1
        with anyio.fail_after(5):
            await returned.wait()
    assert journal.stats()["listeners"] == 0


# -- lifecycle and configuration ------------------------------------------------------


async def test_lifecycle(redis_url: str, prefix: str) -> None:
    journal = RedisJournal(redis_url, prefix=prefix)
    with pytest.raises(BatcherClosed):
        await journal.append([enc()])
    with pytest.raises(BatcherClosed):
        _ = journal.epoch
    async with journal:
        await journal.ping()
        assert journal.stats()["open"] == 1
    assert journal.stats()["open"] == 0
    with pytest.raises(BatcherClosed):
        await journal.read_after(None, 1)
    with pytest.raises(BatcherClosed):
        async with journal:
            pass


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prefix": ""},
        {"maxlen": 0},
        {"retention_seconds": 0},
        {"block_ms": 0},
        {"cleanup_interval": 0},
        {"url": "http://localhost:6379"},
    ],
)
def test_config_errors(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"url": "redis://127.0.0.1:6379/15", **kwargs}
    with pytest.raises(ConfigError):
        RedisJournal(**args)  # type: ignore[arg-type]


async def test_unreachable_redis_at_open() -> None:
    journal = RedisJournal(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(JournalUnavailable):
        async with journal:
            pass


# -- Redis restarted mid-run ----------------------------------------------------------


class PrivateRedis:
    """A redis-server of this test's own, with an fsync-always AOF in ``directory``
    so that killing it (SIGKILL, no clean shutdown) loses nothing."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def wait_ready(self) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            with anyio.fail_after(10):
                while True:
                    try:
                        if client.ping():
                            return
                    except redis.RedisError:
                        await anyio.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path, redis_url: str) -> Iterator[PrivateRedis]:
    # redis_url: the same skip/fail rule as every Redis test.
    server = PrivateRedis(tmp_path)
    try:
        yield server
    finally:
        server.kill()


async def test_redis_restart_mid_run_loses_nothing(private_redis: PrivateRedis) -> None:
    private_redis.start()
    await private_redis.wait_ready()
    async with (
        RedisJournal(private_redis.url, block_ms=200) as a,
        RedisJournal(private_redis.url, block_ms=200) as b,
    ):
        epoch = a.epoch
        tail = Collector()
        async with anyio.create_task_group() as tg:
            await tg.start(b.run_tail, tail)
            appended = await a.append([enc(n=n) for n in range(10)])
            await wait_until(lambda: len(tail.stored) == 10)

            private_redis.kill()
            with pytest.raises(JournalUnavailable):
                await a.append([enc(n=99)])
            with pytest.raises(JournalUnavailable):
                await a.ping()
            await wait_until(lambda: b.stats()["tail_reconnects"] >= 1)

            private_redis.start()
            await private_redis.wait_ready()
            await wait_until(lambda: b.stats()["open"] == 1)
            with anyio.fail_after(10):  # the batcher's retry, in miniature
                while True:
                    try:
                        appended += await a.append([enc(n=n) for n in range(10, 20)])
                        break
                    except JournalUnavailable:
                        await anyio.sleep(0.05)
            await a.ping()
            await wait_until(lambda: len(tail.stored) == 20)
            assert [s.id for s in tail.stored] == [s.id for s in appended]
            assert a.epoch == epoch == b.epoch
            assert [s.id for s in await b.read_after(None, 100)] == [s.id for s in appended]
            tg.cancel_scope.cancel()
    assert a.stats()["failures"] >= 1
