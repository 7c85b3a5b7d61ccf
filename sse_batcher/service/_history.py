"""``GET /events/history``: the journal as JSON pages, through the subscriber's filter.

The page holds up to ``limit`` events that pass the filter (channel patterns and
permissions, the same test replay applies). Events the filter skips are read and
passed over, at most ``SCAN_PAGES`` journal pages per request so one request's cost
stays bounded; ``next`` is always the id of the last event read, so a client that
pages with it never sees an event twice and never misses one it may see.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from starlette.responses import Response

from sse_batcher._exceptions import InvalidCursor
from sse_batcher.batching._events import Event, Position, StoredEvent
from sse_batcher.batching._journal import Journal

__all__ = ["HISTORY_DEFAULT_LIMIT", "HISTORY_MAX_LIMIT", "SCAN_PAGES", "history_page"]

logger = logging.getLogger("sse_batcher.app")

HISTORY_DEFAULT_LIMIT = 100
HISTORY_MAX_LIMIT = 1000
SCAN_PAGES = 10  # journal pages one filtered request may read (10 x limit rows at most)


def _json_error(status: int, message: str, **headers: str) -> Response:
    return Response(
        orjson.dumps({"error": message}),
        status_code=status,
        media_type="application/json",
        headers=headers or None,
    )


async def history_page(
    journal: Journal,
    after: str | None,
    limit: int,
    accept: Callable[[Event], bool] | None,
) -> Response:
    """One page of history after the cursor ``after``; ``accept`` None takes every event."""
    position: Position | None = None
    reset = None
    try:
        if after is not None:
            resume = await journal.resume(after)
            position = resume.after
            if resume.reset is not None:
                reset = {"reason": resume.reset, "oldest_id": resume.oldest_id}
        rows, last_id, more = await _read(journal, position, limit, accept)
    except InvalidCursor as exc:
        return _json_error(400, str(exc))
    except Exception as exc:
        logger.warning("history read failed: %s", exc)
        return _json_error(503, f"journal unavailable: {exc}", **{"Retry-After": "1"})
    next_id = last_id if last_id is not None else (after if reset is None else None)
    body = b"".join(
        (
            b'{"events":[',
            b",".join(row.envelope_json() for row in rows),
            b'],"next":',
            orjson.dumps(next_id),
            b',"more":',
            b"true" if more else b"false",
            b',"reset":',
            orjson.dumps(reset),
            b"}",
        )
    )
    return Response(body, media_type="application/json")


async def _read(
    journal: Journal,
    position: Position | None,
    limit: int,
    accept: Callable[[Event], bool] | None,
) -> tuple[list[StoredEvent], str | None, bool]:
    """(events that pass, id of the last event read, whether the journal has more)."""
    if accept is None:
        rows = await journal.read_after(position, limit)
        return rows, (rows[-1].id if rows else None), len(rows) == limit
    kept: list[StoredEvent] = []
    last_id: str | None = None
    for _ in range(SCAN_PAGES):
        rows = await journal.read_after(position, limit)
        for row in rows:
            last_id = row.id
            if accept(row.event):
                kept.append(row)
                if len(kept) == limit:
                    return kept, last_id, True
        if len(rows) < limit:
            return kept, last_id, False
        position = rows[-1].position
    return kept, last_id, True
