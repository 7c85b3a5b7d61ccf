"""The journal protocol: where batches become durable and ids are assigned.

Two implementations share it: ``SQLiteJournal`` (embedded default) and
``RedisJournal`` (many nodes). The batcher calls :meth:`Journal.append`; the hub
runs :meth:`Journal.run_tail` to receive every appended batch (also those other
nodes appended, for Redis) and :meth:`Journal.read_after` to replay.

Wire ids carry the journal's epoch so an id from another database (or a Redis
stream that was deleted and recreated) is recognised: ``"<epoch>.<major>"`` for
SQLite, ``"<epoch>.<ms>-<seq>"`` for Redis. A bare position (``"42"``) is accepted
too, for people typing ids into curl; it is taken to be of the current epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from anyio.abc import TaskStatus

from sse_batcher._exceptions import InvalidCursor
from sse_batcher.batching._events import EncodedEvent, Position, StoredEvent

__all__ = [
    "Journal",
    "Resume",
    "TailListener",
    "format_event_id",
    "parse_event_id",
]

TailListener = Callable[[Sequence[StoredEvent]], None]
"""Called with each appended batch, in journal order, on the event loop thread.
It must not block or await: the hub's listener only copies references into
bounded per-subscriber buffers."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a subscriber with a cursor resumes.

    Attributes:
        after: replay events after this position (None: from the oldest available).
        reset: None when the cursor is served as asked; else why not:
            ``"epoch"`` (id from another journal), ``"trimmed"`` (older than
            retention), ``"future"`` (beyond the newest id: another journal).
        oldest_id: the oldest id still available (None when the journal is empty).
    """

    after: Position | None
    reset: str | None = None
    oldest_id: str | None = None


def format_event_id(epoch: str, position: Position, *, two_part: bool) -> str:
    """Wire id for a position: ``E.42`` or, for two-part journals, ``E.1700000000000-3``."""
    if two_part:
        return f"{epoch}.{position.major}-{position.minor}"
    return f"{epoch}.{position.major}"


def parse_event_id(text: str, *, two_part: bool) -> tuple[str | None, Position]:
    """Split a wire id into (epoch or None, position); raise InvalidCursor if malformed."""
    raw = text.strip()
    epoch: str | None = None
    if "." in raw:
        epoch, raw = raw.split(".", 1)
        if not epoch or not epoch.isalnum():
            raise InvalidCursor(f"malformed event id {text[:60]!r}")
    try:
        if "-" in raw and two_part:
            major_s, minor_s = raw.split("-", 1)
            position = Position(int(major_s), int(minor_s))
        else:
            position = Position(int(raw), 0)
    except ValueError:
        raise InvalidCursor(f"malformed event id {text[:60]!r}") from None
    if position.major < 0 or position.minor < 0:
        raise InvalidCursor(f"malformed event id {text[:60]!r}")
    return epoch, position


@runtime_checkable
class Journal(Protocol):
    """Durable, ordered storage of events with resumable reads.

    A journal is an async context manager: ``async with journal:`` opens it and
    starts its background tasks (retention cleanup, Redis connections); leaving
    the block stops them. Using it outside the block raises ``BatcherClosed``.
    """

    @property
    def epoch(self) -> str:
        """A token that changes when the underlying store is recreated."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool | None: ...

    async def append(self, events: Sequence[EncodedEvent]) -> list[StoredEvent]:
        """Store the persisted events in one transaction (one ``executemany``,
        one pipeline), assign their ids, then pass all events, stream-only ones
        included, to the tail listeners in order. Returns them as stored.

        All or nothing: on failure nothing is stored or published and
        ``JournalUnavailable`` is raised (the batcher retries).
        """
        ...

    async def read_after(self, after: Position | None, limit: int) -> list[StoredEvent]:
        """Durable events with position > ``after`` (None: from the oldest), oldest
        first, at most ``limit``."""
        ...

    async def resume(self, cursor: str) -> Resume:
        """Decide where a subscriber holding wire id ``cursor`` resumes.

        Raises InvalidCursor when the text is not an id at all.
        """
        ...

    async def newest_id(self) -> str | None:
        """The id of the newest durable event, None when empty."""
        ...

    async def run_tail(self, deliver: TailListener, *, task_status: TaskStatus[None] = ...) -> None:
        """Call ``deliver`` with every appended batch until cancelled.

        Calls ``task_status.started()`` once ``deliver`` is guaranteed to see every
        batch appended from then on. The hub runs this in its task group.
        """
        ...

    async def ping(self) -> None:
        """Return when the journal answers; raise JournalUnavailable otherwise."""
        ...

    async def recent_uids(self, within_seconds: float) -> set[str]:
        """Idempotency keys stored in the last ``within_seconds`` (for de-duplication
        across restarts)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters for ``/stats`` and ``/metrics`` (flat, JSON-serialisable)."""
        ...
