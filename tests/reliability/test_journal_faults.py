"""Journal failures: locked by another writer, read-only, full filesystem.

During the fault writes are retried, then dead-lettered (counted, nothing dropped),
and ``/health`` answers 503. Once it clears every event ends up in the journal
exactly once, in first-event order (similar events batch together; groups are
written in order of their first event), and it happens without new traffic.

How each fault is made (all real SQLite errors, none mocked):
- locked: another connection holds ``BEGIN EXCLUSIVE`` on the file;
- read-only: ``PRAGMA query_only = 1`` on the journal's writer connection (SQLite then
  fails writes with SQLITE_READONLY, the error a read-only file gives; a read-only
  remount is refused while the file is open, and chmod does not stop root);
- full: the database lives on a small tmpfs filled by a filler file. Where mounting is
  not permitted, a wrapper journal raises ``OSError(ENOSPC)`` from ``append`` instead.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from sse_batcher import (
    EncodedEvent,
    JournalUnavailable,
    SQLiteJournal,
    SSEEventBatcher,
    StoredEvent,
    create_app,
)

from ..servers import app_client
from .helpers import members, poll, sqlite_lock, stored_rows, stored_values

pytestmark = pytest.mark.anyio

FAULTS = ["locked", "read-only", "full"]


class InjectedENOSPC:
    """Fallback for a full disk where tmpfs cannot be mounted: appends fail with ENOSPC
    while ``full`` is set, exactly as SQLiteJournal reports a full disk."""

    def __init__(self, inner: SQLiteJournal) -> None:
        self.inner = inner
        self.full = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def epoch(self) -> str:
        return self.inner.epoch

    async def __aenter__(self) -> InjectedENOSPC:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.inner.__aexit__(*exc)

    async def append(self, events: Sequence[EncodedEvent]) -> list[StoredEvent]:
        if self.full:
            error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise JournalUnavailable(f"{self.inner.path}: {error}") from error
        return await self.inner.append(events)


def try_mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


@contextmanager
def full_disk_dir(tmp_path: Path) -> Iterator[Path | None]:
    """A 2 MiB tmpfs directory (None when mounting is not permitted)."""
    mnt = tmp_path / "small"
    if not try_mount_tmpfs(mnt, "2m"):
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


class Fault:
    """Turns one kind of fault on and off for a running service."""

    def __init__(self, kind: str, db: Path, journal: Any) -> None:
        self.kind = kind
        self.db = db
        self.journal = journal
        self._lock: Any = None

    async def on(self) -> None:
        if self.kind == "locked":
            self._lock = sqlite_lock(self.db)
            self._lock.__enter__()
        elif self.kind == "read-only":
            await self.journal._writer.execute("PRAGMA query_only = 1")
        elif isinstance(self.journal, InjectedENOSPC):
            self.journal.full = True
        else:
            with (self.db.parent / "filler").open("wb") as fh:
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC

    async def off(self) -> None:
        if self.kind == "locked":
            self._lock.__exit__(None, None, None)
        elif self.kind == "read-only":
            await self.journal._writer.execute("PRAGMA query_only = 0")
        elif isinstance(self.journal, InjectedENOSPC):
            self.journal.full = False
        else:
            (self.db.parent / "filler").unlink()


Service = tuple[Starlette, httpx.AsyncClient, Fault, Path]


@pytest.fixture
def service(tmp_path: Path) -> Any:
    @asynccontextmanager
    async def make(kind: str, dead_letter_beside_db: bool = False) -> AsyncIterator[Service]:
        with full_disk_dir(tmp_path) if kind == "full" else _nothing() as small:
            db = (small or tmp_path) / "faults.db"
            journal: Any = SQLiteJournal(db, busy_timeout=0.2)
            if kind == "full" and small is None:
                journal = InjectedENOSPC(journal)
            batcher = SSEEventBatcher(
                journal,
                window=0.02,
                max_retries=2,
                retry_delay=0.02,
                dead_letter_path=(db.parent if dead_letter_beside_db else tmp_path) / "dead.jsonl",
            )
            app = create_app(batcher)
            async with app_client(app) as client:
                yield app, client, Fault(kind, db, journal), db

    return make


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def events(start: int, n: int) -> list[dict[str, Any]]:
    types = ("JOB_STARTED", "JOB_COMPLETED", "FILE_SAVED")
    return [
        {"type": types[i % 3], "source": f"w{i % 2}", "data": {"seq": i, "job_id": i}}
        for i in range(start, start + n)
    ]


def assert_first_event_order(db: Path, n: int) -> None:
    """Every event exactly once, rows in order of their first member (the design's
    order: similar events batch together, groups flush in first-event order)."""
    rows = [[m["seq"] for m in members(data)] for _, _, data in stored_rows(db)]
    assert sorted(s for row in rows for s in row) == list(range(n))
    assert all(row == sorted(row) for row in rows)
    firsts = [row[0] for row in rows]
    assert firsts == sorted(firsts), firsts


async def post(client: httpx.AsyncClient, batch: list[dict[str, Any]]) -> None:
    response = await client.post("/events", json=batch)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(batch)


async def during_fault(app: Starlette, client: httpx.AsyncClient, fault: Fault) -> None:
    """Healthy writes, then 30 events during the fault; checks the fault's accounting."""
    batcher: SSEEventBatcher = app.state.batcher
    await post(client, events(0, 5))
    await batcher.flush()
    await fault.on()
    for start in range(5, 35, 3):
        await post(client, events(start, 3))
    await batcher.flush()  # returns once written or dead-lettered
    stats = batcher.stats()
    assert stats.failed_writes >= 3 and stats.retries >= 2, stats
    assert stats.dead_lettered == 30 and stats.dead_letter_pending == 30, stats
    assert stats.dropped_total == 0 and stats.queue_depth == 0, stats


@pytest.mark.parametrize("kind", FAULTS)
async def test_fault_retries_then_dead_letters_and_nothing_is_lost(service: Any, kind: str) -> None:
    async with service(kind) as (app, client, fault, db):
        await during_fault(app, client, fault)
        await fault.off()
        # The next write succeeds and re-appends the dead letters after it.
        await post(client, events(35, 1))
        await app.state.batcher.flush()
        stored = stored_values(db)
        assert sorted(stored) == list(range(36)), "every event exactly once"
        assert app.state.batcher.stats().dead_letter_pending == 0
        assert app.state.batcher.stats().dead_letter_replayed == 30


@pytest.mark.parametrize("kind", FAULTS)
async def test_fault_recovery_keeps_emit_order(service: Any, kind: str) -> None:
    async with service(kind) as (app, client, fault, db):
        await during_fault(app, client, fault)
        await fault.off()
        await post(client, events(35, 1))
        await app.state.batcher.flush()
        assert_first_event_order(db, 36)


@pytest.mark.parametrize("kind", ["locked"])  # the same code path for every fault
async def test_dead_letters_reach_the_journal_once_it_recovers_without_new_traffic(
    service: Any, kind: str
) -> None:
    async with service(kind) as (app, client, fault, db):
        await during_fault(app, client, fault)
        await fault.off()
        # The fault lasted ~1 s, so the recovery probe's backoff is still short.
        await poll(lambda: len(stored_values(db)) == 35, 10, "dead letters re-appended")
        assert_first_event_order(db, 35)


@pytest.mark.parametrize("kind", FAULTS)
async def test_health_is_503_during_the_fault_and_200_after(service: Any, kind: str) -> None:
    async with service(kind) as (app, client, fault, _db):
        assert (await client.get("/health")).status_code == 200
        await during_fault(app, client, fault)
        response = await client.get("/health")
        assert response.status_code == 503, response.text
        assert "error" in response.json()
        await fault.off()
        await post(client, events(35, 1))
        await app.state.batcher.flush()
        assert (await client.get("/health")).status_code == 200


async def test_full_disk_with_the_dead_letter_file_on_it_loses_nothing_silently(
    service: Any,
) -> None:
    """The usual layout: --dead-letter beside the database, both on the full disk."""
    async with service("full", dead_letter_beside_db=True) as (app, client, fault, db):
        if isinstance(fault.journal, InjectedENOSPC):
            pytest.skip("needs a real full filesystem (tmpfs mount not permitted)")
        batcher: SSEEventBatcher = app.state.batcher
        await post(client, events(0, 5))
        await batcher.flush()
        await fault.on()
        for start in range(5, 35, 3):
            await post(client, events(start, 3))
        with anyio.fail_after(3):
            await batcher.flush()
        assert batcher.running, "the batcher stopped: a full disk must not kill the writer"
        stats = batcher.stats()
        assert stats.events_in == 35
        held = stats.dead_letter_pending + stats.queue_depth
        assert stats.members_out + held + stats.dropped_total == 35, stats
        await fault.off()
        await post(client, events(35, 1))
        await batcher.flush()
        assert sorted(stored_values(db)) == list(range(36))
