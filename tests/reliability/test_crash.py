"""Crash and stop: kill -9 and SIGTERM of a real server under a steady publisher load.

What a kill may lose is bounded: only events acknowledged (202) within the last
window (plus the write in progress) before the kill, never one that was committed,
and with ``--durable-ingest`` nothing acknowledged at all. SIGTERM loses nothing.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import anyio
import httpx
import pytest

from ..servers import ServerProcess
from .helpers import poll, stored_rows, stored_values
from .load import Load, Subscriber

pytestmark = pytest.mark.anyio

WINDOW_MS = 200
# A lost event's 202 arrived at most one window, plus one write and the kill's own
# delivery, before the kill. Generous: the window is 0.2 s, the slack 1 s.
LOSS_HORIZON = WINDOW_MS / 1000 + 1.0
LOAD_SECONDS = 1.5


def history_ids(url: str) -> list[str]:
    ids: list[str] = []
    after = None
    with httpx.Client(base_url=url, timeout=10) as client:
        while True:
            params = {"limit": 1000} | ({} if after is None else {"after": after})
            page = client.get("/events/history", params=params).json()
            ids += [e["id"] for e in page["events"]]
            if not page["more"]:
                return ids
            after = page["next"]


async def load_then(server: ServerProcess, load: Load, action: str) -> tuple[Subscriber, float]:
    """Run ``load`` against ``server`` with a live subscriber, then kill or stop it."""
    subscriber = Subscriber(server.url)
    await subscriber.start()
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(subscriber.follow)
        tg.start_soon(load.run_until, stop)
        await poll(lambda: len(subscriber.seqs) > 200, 20, "the subscriber to receive events")
        await anyio.sleep(LOAD_SECONDS)  # steady load for a while (not synchronisation)
        acted_at = time.monotonic()
        if action == "kill":
            server.kill()
        else:
            await anyio.to_thread.run_sync(server.stop, signal.SIGTERM)
        stop.set()
        # The stream ends when the process goes.
        await poll(lambda: subscriber.client.eof, 20, "the stream to end")
        tg.cancel_scope.cancel()
    subscriber.close()
    return subscriber, acted_at


async def resume_and_check(url: str, cursor: str, expected: list[str]) -> Subscriber:
    """A client resuming after ``cursor`` gets exactly ``expected`` ids, in order, once."""
    subscriber = Subscriber(url, last_event_id=cursor)
    await subscriber.start()
    try:
        if expected:
            await subscriber.read_until_id(expected[-1], 20)
    finally:
        subscriber.close()
    assert subscriber.resets == []
    assert subscriber.ids == expected
    return subscriber


@pytest.mark.parametrize("durable", [False, True], ids=["default", "durable-ingest"])
async def test_kill_9_loses_only_unflushed_events_and_resume_is_exact(
    tmp_path: Path, durable: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "crash.db"
    args = ["--db", str(db), "--window-ms", str(WINDOW_MS)]
    if durable:
        args.append("--durable-ingest")
    load = Load("", publishers=4, per_post=5, run="k")
    async with ServerProcess(args) as server:
        load.url = server.url
        before, killed_at = await load_then(server, load, "kill")

    async with ServerProcess(args) as server:
        ids = history_ids(server.url)
        # Clients resuming from several cursors get every durable event after it, once.
        for cursor in {before.ids[-1], before.ids[len(before.ids) // 2], ids[0]}:
            await resume_and_check(server.url, cursor, ids[ids.index(cursor) + 1 :])

    stored = stored_values(db)
    counts = Counter(stored)
    assert [s for s, n in counts.items() if n > 1] == [], "an event was stored twice"
    assert set(stored) <= load.sent
    # Everything a subscriber saw before the kill had been committed: it survived.
    assert set(before.seqs) <= set(stored)
    # Ids are consecutive: nothing committed vanished from the middle.
    row_ids = [row[0] for row in stored_rows(db)]
    assert row_ids == list(range(row_ids[0], row_ids[0] + len(row_ids)))
    lost = {s: t for s, t in load.accepted.items() if s not in counts}
    late = {s: round(killed_at - t, 3) for s, t in lost.items() if killed_at - t > LOSS_HORIZON}
    assert late == {}, f"acknowledged events older than the window were lost: {late}"
    with capsys.disabled():
        print(
            f"\n[kill -9 {'durable' if durable else 'default'}] accepted={len(load.accepted)} "
            f"stored={len(stored)} delivered-before-kill={len(before.seqs)} "
            f"acknowledged-but-lost={len(lost)} (window {WINDOW_MS} ms)"
        )
    if durable:
        assert lost == {}, f"--durable-ingest lost {len(lost)} acknowledged events"


async def test_sigterm_under_load_flushes_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "stop.db"
    # A long window: at SIGTERM most accepted events are still open groups in memory.
    args = ["--db", str(db), "--window-ms", "2000"]
    load = Load("", publishers=4, per_post=5, run="t")
    async with ServerProcess(args) as server:
        load.url = server.url
        await load_then(server, load, "stop")
        assert server.returncode == 0, server.output()
        output = server.output()
    stored = stored_values(db)
    assert len(stored) == len(set(stored))
    missing = set(load.accepted) - set(stored)
    assert missing == set(), f"SIGTERM lost {len(missing)} acknowledged events"
    assert "0 dropped, 0 dead-lettered" in output, output
    with capsys.disabled():
        print(f"\n[SIGTERM] accepted={len(load.accepted)} stored={len(stored)} lost=0")
