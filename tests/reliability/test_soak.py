"""``make soak``: a mixed load with periodic kills (default 10 minutes; SOAK_SECONDS).

Cycles of: start the server on the same database, resume a subscriber from the last
id it saw, run publishers for a few seconds, then kill -9 (or SIGTERM every third
cycle). Cycles alternate ``--durable-ingest`` and the default. At the end: every
acknowledged event is stored, except (default-mode kills only) ones acknowledged
within the window before the kill; nothing is stored twice; the subscriber, across
every restart, received every stored event exactly once and in order.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from ..servers import ServerProcess
from .helpers import poll, stored_rows, stored_values
from .load import Load, Subscriber
from .test_crash import LOSS_HORIZON, WINDOW_MS, history_ids

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.mark.timeout(0)
async def test_soak_mixed_load_with_kills(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    budget = float(os.environ.get("SOAK_SECONDS", 600))
    db = tmp_path / "soak.db"
    rng = random.Random(9)
    deadline = time.monotonic() + budget
    delivered: list[str] = []
    acknowledged: dict[str, float] = {}
    allowed_loss: set[str] = set()
    sent: set[str] = set()
    cursor: str | None = None
    cycle = 0
    kills = stops = 0
    while time.monotonic() < deadline:
        durable = cycle % 2 == 0
        action = "stop" if cycle % 3 == 2 else "kill"
        args = ["--db", str(db), "--window-ms", str(WINDOW_MS)]
        if durable:
            args.append("--durable-ingest")
        load = Load("", publishers=rng.randint(1, 6), per_post=rng.randint(1, 20), run=f"c{cycle}")
        async with ServerProcess(args) as server:
            load.url = server.url
            subscriber = Subscriber(server.url, last_event_id=cursor)
            await subscriber.start()
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(subscriber.follow)
                tg.start_soon(load.run_until, stop)
                await anyio.sleep(min(rng.uniform(3, 15), max(0.5, deadline - time.monotonic())))
                acted_at = time.monotonic()
                if action == "kill":
                    server.kill()
                    kills += 1
                else:
                    await anyio.to_thread.run_sync(server.stop, signal.SIGTERM)
                    stops += 1
                stop.set()
                await poll(lambda s=subscriber: s.client.eof, 20, "the stream to end")
                tg.cancel_scope.cancel()
            subscriber.close()
        assert subscriber.resets == []
        delivered += subscriber.ids
        cursor = delivered[-1] if delivered else cursor
        acknowledged.update(load.accepted)
        sent |= load.sent
        if action == "kill" and not durable:
            allowed_loss |= {s for s, t in load.accepted.items() if acted_at - t <= LOSS_HORIZON}
        cycle += 1

    async with ServerProcess(["--db", str(db)]) as server:
        ids = history_ids(server.url)
        subscriber = Subscriber(server.url, last_event_id=cursor)
        await subscriber.start()
        try:
            if ids and ids[-1] != cursor:
                await subscriber.read_until_id(ids[-1], 60)
        finally:
            subscriber.close()
        delivered += subscriber.ids

    stored = stored_values(db)
    counts = Counter(stored)
    lost = set(acknowledged) - set(counts)
    with capsys.disabled():
        print(
            f"\n[soak {budget:.0f} s] cycles={cycle} kills={kills} sigterms={stops} "
            f"sent={len(sent)} acknowledged={len(acknowledged)} stored={len(stored)} "
            f"stored_rows={len(ids)} delivered_rows={len(delivered)} "
            f"lost_within_window={len(lost)} (allowed {len(allowed_loss)})"
        )
    assert [s for s, n in counts.items() if n > 1] == []
    assert set(stored) <= sent
    assert lost <= allowed_loss, sorted(lost - allowed_loss)[:20]
    assert delivered == ids == [f"{ids[0].split('.')[0]}.{row[0]}" for row in stored_rows(db)]
