"""Statistics snapshots: frozen values, cheap to take, safe to hand out."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BatcherStats", "LatencyWindow", "SourceCounters", "WorkerInfo"]


@dataclass(frozen=True, slots=True)
class BatcherStats:
    """A snapshot of the batcher's counters (``SSEEventBatcher.stats()``).

    Reconciliation: ``events_in == members_out + coalesced + dropped_total +
    dead_letter_pending + queue_depth`` at every snapshot taken while idle.
    """

    events_in: int
    members_out: int
    messages_out: int
    batches_created: int
    messages_saved: int
    coalesced: int
    writes: int
    retries: int
    failed_writes: int
    dead_lettered: int
    dead_letter_replayed: int
    dead_letter_pending: int
    queue_depth: int
    queue_bytes: int
    mean_batch_size: float
    queue_time_p50_ms: float
    queue_time_p99_ms: float
    flushes: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        """Every event dropped, whatever the reason."""
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (``/stats``), with ``dropped_total``."""
        out = asdict(self)
        out["dropped_total"] = self.dropped_total
        return out


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One source seen by the batcher (``GET /workers``)."""

    name: str
    events_in: int
    messages_out: int
    batching: bool
    last_seen: float | None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)


class SourceCounters:
    """Live counters for one source: the assembler counts events in, the writer
    counts messages out; ``WorkerInfo`` is their snapshot."""

    __slots__ = ("events_in", "last_seen", "messages_out")

    def __init__(self) -> None:
        self.events_in = 0
        self.messages_out = 0
        self.last_seen: float | None = None


class LatencyWindow:
    """The last ``size`` latency samples, for p50/p99 without unbounded memory."""

    def __init__(self, size: int = 4096) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def percentile_ms(self, q: float) -> float:
        """The q-quantile (0..1) of the window in milliseconds, 0.0 when empty."""
        if not self._samples:
            return 0.0
        ordered = sorted(self._samples)
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index] * 1000.0
