"""The dead-letter store: batches the journal refused after every retry.

JSON lines, one encoded event per line, data spliced in as stored. The batcher
re-appends them, in order, after its next successful write and at start. With no
path the store lives in memory (still counted and re-appended, lost at exit).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anyio
import orjson

from ._events import EncodedEvent, Event

__all__ = ["DeadLetterStore"]


def _encode(item: EncodedEvent) -> bytes:
    event = item.event
    head = orjson.dumps(
        {
            "type": event.type,
            "source": event.source,
            "ts": event.ts,
            "uid": event.uid,
            "uids": list(item.uids),
            "persist": item.persist,
            "members": item.members,
        }
    )
    line: bytes = head[:-1] + b',"data":' + item.data_json + b"}\n"
    return line


def _decode(line: bytes) -> EncodedEvent:
    raw = orjson.loads(line)
    data = raw["data"]
    event = Event(
        type=raw["type"], source=raw["source"], data=data, ts=raw["ts"], uid=raw.get("uid")
    )
    return EncodedEvent(
        event=event,
        data_json=orjson.dumps(data),
        persist=raw.get("persist", True),
        uids=tuple(raw.get("uids", ())),
        members=raw.get("members", 1),
    )


class DeadLetterStore:
    """Append-only store of undeliverable events, drained in order.

    Args:
        path: the JSON-lines file, or None to keep dead letters in memory.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._memory: list[EncodedEvent] = []
        self.pending = 0

    async def load(self) -> list[EncodedEvent]:
        """Everything waiting, oldest first (reads the file when there is one)."""
        if self.path is None:
            return list(self._memory)
        path = self.path

        def read() -> list[EncodedEvent]:
            if not path.exists():
                return []
            return [_decode(line) for line in path.read_bytes().splitlines() if line.strip()]

        items = await anyio.to_thread.run_sync(read)
        self.pending = sum(i.members for i in items)
        return items

    async def add(self, items: Sequence[EncodedEvent]) -> None:
        """Append items (fsynced when on disk)."""
        self.pending += sum(i.members for i in items)
        if self.path is None:
            self._memory.extend(items)
            return
        path = self.path
        payload = b"".join(_encode(i) for i in items)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())

        await anyio.to_thread.run_sync(write)

    async def replace(self, remaining: Sequence[EncodedEvent]) -> None:
        """Keep only ``remaining`` (atomically, so a crash never re-sends what was
        already re-appended)."""
        self.pending = sum(i.members for i in remaining)
        if self.path is None:
            self._memory = list(remaining)
            return
        path = self.path
        payload = b"".join(_encode(i) for i in remaining)

        def write() -> None:
            if not payload:
                path.unlink(missing_ok=True)
                return
            tmp = path.with_suffix(path.suffix + ".tmp")
            with tmp.open("wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)

        await anyio.to_thread.run_sync(write)
