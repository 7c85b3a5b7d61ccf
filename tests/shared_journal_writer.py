"""A process that appends to a shared SQLite journal and records what its tail delivers.

Run as ``python tests/shared_journal_writer.py DB NAME BATCHES TOTAL``: appends
``BATCHES`` batches of 1, 2, .. 5, 1, .. events, waits until its tail has delivered ``TOTAL``
rows (from every process), then prints one JSON line: the ids it appended and
the ids its tail delivered, in delivery order.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import anyio
import orjson

from sse_batcher import EncodedEvent, Event, SQLiteJournal, StoredEvent
from sse_batcher.batching._events import encode_data


async def main(db: str, name: str, batches: int, total: int) -> None:
    delivered: list[int] = []
    appended: list[int] = []
    done = anyio.Event()

    def listener(events: Sequence[StoredEvent]) -> None:
        delivered.extend(e.position.major for e in events if e.position is not None)
        if len(delivered) >= total:
            done.set()

    async with (
        SQLiteJournal(db, tail_poll_interval=0.002) as journal,
        anyio.create_task_group() as tg,
    ):
        await tg.start(journal.run_tail, listener)
        print("ready", flush=True)
        sys.stdin.readline()  # every process starts appending at once
        for n in range(batches):
            size = 1 + n % 5
            events = [
                EncodedEvent(Event("JOB_STARTED", name, {"job_id": n}), encode_data({"job_id": n}))
                for _ in range(size)
            ]
            stored = await journal.append(events)
            appended.extend(e.position.major for e in stored if e.position is not None)
        with anyio.fail_after(30):
            await done.wait()
        tg.cancel_scope.cancel()
    print(orjson.dumps({"appended": appended, "delivered": delivered}).decode(), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
