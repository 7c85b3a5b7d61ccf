"""The dead-letter store: batches the journal refused after every retry.

JSON lines, one encoded event per line, data spliced in as stored. The batcher
re-appends them, in order, after its next successful write and at start. With no
path the store lives in memory (still counted and re-appended, lost at exit).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import anyio
import orjson

from sse_batcher.batching._events import DEFAULT_CHANNEL, EncodedEvent, Event

__all__ = ["DeadLetterStore"]

logger = logging.getLogger("sse_batcher.dead_letter")


def _encode(item: EncodedEvent) -> bytes:
    event = item.event
    head = orjson.dumps(
        {
            "type": event.type,
            "source": event.source,
            "ts": event.ts,
            "uid": event.uid,
            "channel": event.channel,
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
        type=raw["type"],
        source=raw["source"],
        data=data,
        ts=raw["ts"],
        uid=raw.get("uid"),
        channel=raw.get("channel", DEFAULT_CHANNEL),  # files written before channels
    )
    return EncodedEvent(
        event=event,
        data_json=orjson.dumps(data),
        persist=raw.get("persist", True),
        uids=tuple(raw.get("uids", ())),
        members=raw.get("members", 1),
    )


class DeadLetterStore:
    """Append-only store of undeliverable events, drained in order. Never raises.

    When the file cannot be written (the disk that filled the journal may be the
    same one), items stay in memory, still counted and retried, and the failure is
    logged: they are lost only if the process dies before the journal recovers.

    Args:
        path: the JSON-lines file, or None to keep dead letters in memory.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._memory: list[EncodedEvent] = []  # not on disk: after the file's items
        self.pending = 0

    async def load(self) -> list[EncodedEvent]:
        """Everything waiting, oldest first: the file's items, then memory's."""
        items: list[EncodedEvent] = []
        if self.path is not None:
            path = self.path

            def read() -> list[EncodedEvent]:
                if not path.exists():
                    return []
                lines = path.read_bytes().splitlines()
                return [_decode(line) for line in lines if line.strip()]

            try:
                items = await anyio.to_thread.run_sync(read)
            except (OSError, ValueError) as exc:
                logger.error("cannot read dead letters from %s: %s", path, exc)
        items += self._memory
        self.pending = sum(i.members for i in items)
        return items

    async def add(self, items: Sequence[EncodedEvent]) -> None:
        """Append items (fsynced when on disk; in memory if the disk refuses)."""
        self.pending += sum(i.members for i in items)
        if self.path is None or self._memory:
            self._memory.extend(items)  # behind what is already in memory: keep order
            return
        path = self.path
        payload = b"".join(_encode(i) for i in items)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())

        try:
            await anyio.to_thread.run_sync(write)
        except OSError as exc:
            logger.error(
                "cannot write dead letters to %s (%s): keeping %d events in memory",
                path,
                exc,
                len(items),
            )
            self._memory.extend(items)

    async def replace(self, remaining: Sequence[EncodedEvent]) -> None:
        """Keep only ``remaining``: atomically, so a crash never re-sends what was
        already re-appended."""
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

        try:
            await anyio.to_thread.run_sync(write)
            self._memory = []
        except OSError as exc:
            # The file still lists events now in the journal: remove it (needs no
            # space) rather than re-send them later, and keep the rest in memory.
            logger.error("cannot rewrite %s (%s): keeping dead letters in memory", path, exc)
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            self._memory = list(remaining)
