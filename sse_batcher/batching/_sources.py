"""SourceTable: per-source counters and the batching switch, owned by one place.

The batcher owns it; the assembler counts events in, the writer counts messages
out, ``GET /workers`` reads snapshots (:class:`WorkerInfo`).
"""

from __future__ import annotations

from sse_batcher.batching._stats import SourceCounters, WorkerInfo

__all__ = ["SourceTable"]


class SourceTable:
    """Every source seen (or configured): its counters and whether it is batched."""

    __slots__ = ("counters", "unbatched")

    def __init__(self) -> None:
        # Plain containers on purpose: the assembler reads them in its per-event loop.
        self.counters: dict[str, SourceCounters] = {}
        self.unbatched: set[str] = set()

    def set_batching(self, source: str, enabled: bool) -> None:
        """Switch batching for one source (it is listed from now on either way)."""
        if enabled:
            self.unbatched.discard(source)
        else:
            self.unbatched.add(source)
        self.counters.setdefault(source, SourceCounters())

    def batching(self, source: str) -> bool:
        """Whether events from ``source`` are batched."""
        return source not in self.unbatched

    def infos(self) -> list[WorkerInfo]:
        """Every source, sorted by name."""
        unbatched = self.unbatched
        return [
            WorkerInfo(
                name=name,
                events_in=c.events_in,
                messages_out=c.messages_out,
                batching=name not in unbatched,
                last_seen=c.last_seen,
            )
            for name, c in sorted(self.counters.items())
        ]
