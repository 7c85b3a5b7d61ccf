"""Catching a subscriber up from its cursor before it goes live (no gap, no duplicate).

::

    register (buffering live) ──► journal.resume(cursor) ──► reset? ──► event: reset
            │                            │
            │                            ▼
            │                   read_after(last, 500) … until a short page
            │                   with no buffer overflow since that read began
            ▼                            │
    live buffer  ──── drop position ≤ last replayed ────► live

A live buffer that overflows while replaying is discarded and the replay goes on
(every durable event is in the journal). Once caught up the subscriber's ``floor``
is the last replayed position: live items at or below it are dropped
(:meth:`Subscriber.after_floor`), whichever way the stream is consumed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Literal

import orjson

from sse_batcher._exceptions import InvalidCursor
from sse_batcher.batching._events import Position
from sse_batcher.batching._journal import Journal, Resume
from sse_batcher.service._subscriber import Subscriber

__all__ = ["REPLAY_PAGE", "OnReset", "catch_up"]

OnReset = Literal["live", "oldest"]
REPLAY_PAGE = 500


async def catch_up(
    journal: Journal,
    sub: Subscriber,
    cursor: str | None,
    on_reset: OnReset,
    counters: dict[str, int],
) -> AsyncGenerator[bytes, None]:
    """The chunks a new stream sends before its live buffer: ``reset`` if the cursor
    cannot be served, then the journal after the cursor, page by page."""
    if cursor is not None:
        after, reset = await _start_after(journal, cursor, counters)
        if reset is not None:
            reset["continue"] = on_reset
            yield b"event: reset\ndata: " + orjson.dumps(reset) + b"\n\n"
        if reset is None or on_reset == "oldest":
            counters["replays"] += 1
            async for chunk in _replay(journal, sub, after):
                yield chunk
    sub.replaying = False


async def _start_after(
    journal: Journal, cursor: str, counters: dict[str, int]
) -> tuple[Position | None, dict[str, Any] | None]:
    """Where to replay from, and why not (reset details) when the cursor is not served."""
    try:
        resume = await journal.resume(cursor)
    except InvalidCursor:
        oldest = await journal.read_after(None, 1)
        resume = Resume(None, reset="invalid", oldest_id=oldest[0].id if oldest else None)
    if resume.reset is None:
        return resume.after, None
    counters["resets"] += 1
    return None, {
        "reason": resume.reset,
        "last_event_id": cursor[:200],
        "oldest_id": resume.oldest_id,
    }


async def _replay(
    journal: Journal, sub: Subscriber, after: Position | None
) -> AsyncGenerator[bytes, None]:
    last = after
    while True:
        clears = sub.clears
        rows = await journal.read_after(last, REPLAY_PAGE)
        if rows:
            last = rows[-1].position
        messages = [row.sse_message() for row in rows if sub.matches(row.event)]
        # Caught up: a short page, and no live event was discarded since this read
        # began (anything newer than the read is in the buffer). Switch atomically.
        if len(rows) < REPLAY_PAGE and sub.clears == clears:
            sub.replaying = False
            sub.floor = last
            if messages:
                yield b"".join(messages)
            return
        if messages:
            yield b"".join(messages)
