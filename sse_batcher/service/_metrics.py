"""``GET /metrics``: the ``/stats`` counters in Prometheus text format.

Each app has its own ``CollectorRegistry`` (two apps in one process never clash)
with one collector that reads the stats at scrape time, so the numbers are the
same ones ``/stats`` shows. Names are ``sse_batcher_<section>_<key>`` (the
batcher's own counters drop the section); nested dicts such as ``dropped`` become
one metric with a ``kind`` label.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    UnknownMetricFamily,
)

__all__ = ["CONTENT_TYPE", "StatsRegistry"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "sse_batcher_"
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")

# Values that go up and down; every other batcher, hub and ingest number is a counter.
GAUGES = frozenset(
    {
        "queue_depth",
        "queue_bytes",
        "mean_batch_size",
        "queue_time_p50_ms",
        "queue_time_p99_ms",
        "dead_letter_pending",
        "subscribers",
        "max_subscribers",
        "buffered_messages",
        "uids_remembered",
    }
)
# Sections whose counters are defined by a pluggable part (journal, sinks): untyped.
UNTYPED_SECTIONS = frozenset({"journal", "sinks"})

_Family = CounterMetricFamily | GaugeMetricFamily | UnknownMetricFamily
Sections = Callable[[], Mapping[str, Mapping[str, Any]]]


class _StatsCollector:
    def __init__(self, sections: Sections) -> None:
        self._sections = sections

    def collect(self) -> Iterator[Metric]:
        for section, stats in self._sections().items():
            stem = PREFIX if section == "batcher" else f"{PREFIX}{section}_"
            for key, value in stats.items():
                name = _UNSAFE.sub("_", f"{stem}{key}")
                kind = "untyped" if section in UNTYPED_SECTIONS else None
                if isinstance(value, Mapping):
                    family = _family(name, f"{section} {key} by kind", key, kind, ["kind"])
                    for label, number in value.items():
                        if _is_number(number):
                            family.add_metric([str(label)], float(number))
                    yield family
                elif _is_number(value):
                    family = _family(name, f"{section} {key}", key, kind, None)
                    family.add_metric([], float(value))
                    yield family


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)


def _family(
    name: str, documentation: str, key: str, kind: str | None, labels: list[str] | None
) -> _Family:
    if kind == "untyped":
        return UnknownMetricFamily(name, documentation, labels=labels)
    if key in GAUGES or key.endswith("_ms"):
        return GaugeMetricFamily(name, documentation, labels=labels)
    return CounterMetricFamily(name, documentation, labels=labels)


class StatsRegistry:
    """A private Prometheus registry over a stats callback.

    Args:
        sections: returns ``{"batcher": {...}, "hub": {...}, ...}`` at scrape time.
    """

    def __init__(self, sections: Sections) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatsCollector(sections))

    def render(self) -> bytes:
        """The exposition text."""
        return bytes(generate_latest(self.registry))
