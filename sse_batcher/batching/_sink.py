"""Sinks: secondary destinations that receive stored events after the journal.

The journal is primary (it assigns ids); sinks get each appended batch afterwards.
A sink never blocks the journal or the stream: the batcher hands every batch to a
:class:`SinkSet`, which gives each sink its own bounded buffer and its own task::

    batcher ── journal.append ──► offer(batch)       (sync, never blocks, never raises)
                                     │
                         SinkSet ────┼──► runner A: buffer ─► task: A.write(batch), retry
                         (one memory │                        with backoff until it succeeds
                          budget)    └──► runner B: buffer ─► task: B.write(batch) ...

A runner writes its batches in order and retries a failed batch forever (the
journal already holds the events), with exponential backoff and jitter. The
buffers share one memory budget; when it is exceeded the sink holding the most
bytes (the one that is behind) sheds its oldest buffered events, non-error events
first, counted and logged. Nothing the caller does ever waits for a sink.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from sse_batcher.batching._events import Event, StoredEvent

__all__ = ["Sink", "event_nbytes", "is_error_event"]

# Approximate memory one buffered event holds besides its encoded data: the Event,
# StoredEvent and Position objects, the id string, list slots (~600 bytes measured on
# CPython 3.11), plus the decoded ``data`` dict, about twice its JSON size.
_EVENT_OVERHEAD = 600
_DATA_FACTOR = 3
_ERROR_LEVELS = frozenset({"error", "critical", "fatal"})
_error_types: dict[str, bool] = {}  # type -> is an error type (cache; called per event)


@runtime_checkable
class Sink(Protocol):
    """A destination for stored events (e.g. :class:`ArchiveSink`)."""

    @property
    def name(self) -> str:
        """Short name used in stats and logs."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool | None: ...

    async def write(self, events: Sequence[StoredEvent]) -> None:
        """Write one batch; raise on failure (the runner retries the same batch)."""
        ...

    def stats(self) -> dict[str, Any]:
        """The sink's own counters."""
        ...


def is_error_event(event: Event) -> bool:
    """True for events that report an error: the type contains ``ERROR`` or ``FAILED``
    (any case), or ``data["level"]`` is ``error``, ``critical`` or ``fatal``."""
    kind = event.type
    flag = _error_types.get(kind)
    if flag is None:
        upper = kind.upper()
        flag = "ERROR" in upper or "FAILED" in upper
        if len(_error_types) < 4096:  # types are few; the bound guards against abuse
            _error_types[kind] = flag
    if flag:
        return True
    level = event.data.get("level")
    return isinstance(level, str) and level.lower() in _ERROR_LEVELS


def event_nbytes(event: StoredEvent) -> int:
    """Approximate memory one buffered event holds (for the shared budget)."""
    return _DATA_FACTOR * len(event.data_json) + _EVENT_OVERHEAD
