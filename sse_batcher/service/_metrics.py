"""``GET /metrics``: the ``/stats`` numbers in Prometheus text format.

Each app has its own ``CollectorRegistry`` (two apps in one process never clash)
with one collector that reads the stats at scrape time, so the numbers are the
same ones ``/stats`` shows.

Every number our own parts report has one entry in ``CATALOGUE``: its type, its
name and what it means, following the Prometheus conventions that ``promtool check
metrics`` enforces: base units (``_seconds``, ``_bytes``; ``/stats`` keeps its
``_ms``), counters ending in ``_total``, and one metric per meaning. A label only
splits one quantity into parts that add up (flushes by ``reason``, drops by
``reason``, a sink's figures by ``sink``). ``dropped_total`` and a sink's
``last_error`` are left out: the first is ``sum()`` of ``sse_batcher_dropped_total``,
the second is text.

A number that is not in the catalogue (a custom journal's or sink's own counters)
is still exposed, as ``untyped``: we cannot know whether it only goes up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    UnknownMetricFamily,
)

__all__ = ["CATALOGUE", "CONTENT_TYPE", "SKIPPED", "StatsRegistry"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "sse_batcher_"
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")
_MS = 0.001


@dataclass(frozen=True, slots=True)
class Spec:
    """One number's meaning: ``name`` without prefix (and without ``_total``)."""

    kind: Literal["counter", "gauge"]
    name: str
    help: str
    scale: float = 1.0
    label: str | None = None  # for a mapping value: the label naming its keys
    label_value: str | None = None  # several keys as parts of one metric


def _c(name: str, help: str, **kw: Any) -> Spec:
    return Spec("counter", name, help, **kw)


def _g(name: str, help: str, **kw: Any) -> Spec:
    return Spec("gauge", name, help, **kw)


_JOURNAL = {
    "appends": _c("journal_appends", "append calls (one per batch written)"),
    "transactions": _c("journal_transactions", "write transactions (group commit)"),
    "rows_written": _c("journal_rows_written", "events written"),
    "uids_written": _c("journal_uids_written", "idempotency uids written"),
    "stream_only": _c("journal_stream_only", "stream-only events passed through unstored"),
    "failures": _c("journal_failures", "failed appends"),
    "rows_deleted": _c("journal_rows_deleted", "events deleted by retention"),
    "uids_deleted": _c("journal_uids_deleted", "idempotency uids deleted by retention"),
    "cleanup_runs": _c("journal_cleanup_runs", "retention passes"),
    "cleanup_failures": _c("journal_cleanup_failures", "failed retention passes"),
    "listener_errors": _c("journal_listener_errors", "exceptions raised by tail listeners"),
    "streams_created": _c("journal_streams_created", "Redis streams created (a new epoch)"),
    "epoch_changes": _c("journal_epoch_changes", "journal epoch changes seen"),
    "tail_delivered": _c("journal_tail_delivered", "events the Redis tail delivered"),
    "tail_batches": _c("journal_tail_batches", "batches the Redis tail delivered"),
    "tail_reconnects": _c("journal_tail_reconnects", "Redis tail reconnects"),
    "live_received": _c("journal_live_received", "stream-only events received from peers"),
    "tail_reads": _c("journal_tail_reads", "reads of rows other processes committed"),
    "tail_rows_read": _c("journal_tail_rows_read", "rows other processes committed, read"),
    "tail_errors": _c("journal_tail_errors", "failed tail reads"),
    "tail_wal_watch": _g("journal_tail_wal_watch", "1 when the tail waits on inotify"),
    "max_appends_per_transaction": _g(
        "journal_max_appends_per_transaction", "most appends one transaction carried"
    ),
    "last_append_ms": _g("journal_last_append_seconds", "duration of the last append", scale=_MS),
    "listeners": _g("journal_listeners", "tail listeners registered"),
    "waiting_appends": _g("journal_waiting_appends", "appends waiting for a commit"),
    "open": _g("journal_open", "1 while the journal is open"),
}

_SINK = {
    "received": _c("sink_received", "events handed to the sink"),
    "written": _c("sink_written", "events the sink wrote"),
    "batches_written": _c("sink_batches_written", "write calls that succeeded"),
    "retries": _c("sink_retries", "write retries"),
    "failures": _c("sink_failures", "failed write attempts"),
    "dropped_overflow": _c("sink_dropped", "events dropped", label_value="overflow"),
    "dropped_shutdown": _c("sink_dropped", "events dropped", label_value="shutdown"),
    "dropped_closed": _c("sink_dropped", "events dropped", label_value="closed"),
    "buffered_events": _g("sink_buffered_events", "events waiting for the sink"),
    "buffered_bytes": _g("sink_buffered_bytes", "approximate bytes waiting for the sink"),
    "healthy": _g("sink_healthy", "1 when the last write succeeded"),
    "latency_p99_ms": _g("sink_latency_p99_seconds", "write latency, 99th percentile", scale=_MS),
    "latency_max_ms": _g("sink_latency_max_seconds", "write latency, maximum", scale=_MS),
    # ArchiveSink's own figures (SinkSet prefixes a sink's own keys with sink_)
    "sink_files_open": _g("sink_files_open", "archive files open"),
    "sink_peak_open": _g("sink_files_open_peak", "most archive files open at once"),
    "sink_opens": _c("sink_file_opens", "archive files opened"),
    "sink_evictions": _c("sink_file_evictions", "archive files closed to stay under the limit"),
    "sink_emfile_retries": _c("sink_emfile_retries", "opens retried after EMFILE"),
    "sink_bytes_written": _c("sink_written_bytes", "bytes written to archive files"),
    "sink_lines_written": _c("sink_lines_written", "lines written to archive files"),
    "sink_error_lines": _c("sink_error_lines", "lines written to the errors file"),
    "sink_write_calls": _c("sink_write_calls", "archive write calls"),
    "sink_rollovers": _c("sink_rollovers", "daily rollovers"),
    "sink_compressed": _c("sink_compressed_files", "archive files compressed"),
    "sink_deleted": _c("sink_deleted_files", "archive files deleted by retention"),
    "sink_maintenance_passes": _c("sink_maintenance_passes", "maintenance passes"),
    "sink_maintenance_errors": _c("sink_maintenance_errors", "failed maintenance passes"),
    "sink_write_cpu_ms": _c(
        "sink_write_cpu_seconds", "CPU time of the archive writer thread", scale=_MS
    ),
}

CATALOGUE: dict[str, dict[str, Spec]] = {
    "batcher": {
        "events_in": _c("events_in", "events accepted by emit() and POST /events"),
        "members_out": _c("members_out", "events delivered, each batch member counted"),
        "messages_out": _c("messages_out", "messages delivered (a batch counts once)"),
        "batches_created": _c("batches_created", "batch events made of two or more members"),
        "messages_saved": _c("messages_saved", "messages saved by batching"),
        "coalesced": _c("coalesced", "events superseded by a newer one in latest mode"),
        "writes": _c("writes", "journal writes"),
        "retries": _c("retries", "journal write retries"),
        "failed_writes": _c("failed_writes", "journal writes that failed"),
        "dead_lettered": _c("dead_lettered", "events written to the dead-letter file"),
        "dead_letter_replayed": _c("dead_letter_replayed", "dead-lettered events re-appended"),
        "dead_letter_pending": _g("dead_letter_pending", "dead-lettered events not yet replayed"),
        "queue_depth": _g("queue_depth", "events waiting in the batcher"),
        "queue_bytes": _g("queue_bytes", "bytes of event data waiting in the batcher"),
        "mean_batch_size": _g("mean_batch_size", "members per delivered message"),
        "queue_time_p50_ms": _g(
            "queue_time_p50_seconds", "emit to journal write, median", scale=_MS
        ),
        "queue_time_p99_ms": _g(
            "queue_time_p99_seconds", "emit to journal write, 99th percentile", scale=_MS
        ),
        "flushes": _c("flushes", "groups sealed, by reason", label="reason"),
        "dropped": _c("dropped", "events dropped, by reason", label="reason"),
    },
    "journal": _JOURNAL,
    "hub": {
        "subscribers": _g("hub_subscribers", "open SSE streams"),
        "max_subscribers": _g("hub_max_subscribers", "the configured stream limit"),
        "buffered_messages": _g("hub_buffered_messages", "messages in subscriber buffers"),
        "subscriber_filters": _g("hub_subscriber_filters", "distinct subscriber filters"),
        "subscribed_total": _c("hub_subscribed", "streams opened"),
        "refused_total": _c("hub_refused", "streams refused at the limit"),
        "slow_disconnects": _c("hub_slow_disconnects", "slow subscribers disconnected"),
        "replays": _c("hub_replays", "streams that replayed from the journal"),
        "replay_overflows": _c("hub_replay_overflows", "replays that overflowed a buffer"),
        "resets": _c("hub_resets", "reset events sent (cursor not servable)"),
        "events_in": _c("hub_events_in", "events the hub received from the journal"),
        "messages_queued": _c("hub_messages_queued", "messages queued to subscribers"),
        "tail_restarts": _c("hub_tail_restarts", "journal tail restarts"),
    },
    "ingest": {
        "requests": _c("ingest_requests", "POST /events requests"),
        "accepted": _c("ingest_accepted", "events accepted"),
        "rejected": _c("ingest_rejected", "invalid events rejected"),
        "duplicates": _c("ingest_duplicates", "events skipped as already seen (uid)"),
        "too_large": _c("ingest_too_large", "requests over the body limit"),
        "unparseable": _c("ingest_unparseable", "requests whose body is not valid JSON"),
        "queue_full": _c("ingest_queue_full", "requests refused with 503, queue full"),
        "unauthorized": _c("ingest_unauthorized", "requests refused with 401 or 403"),
        "uids_remembered": _g("ingest_uids_remembered", "uids remembered for deduplication"),
    },
    "auth": {
        "unauthenticated": _c(
            "auth_refused", "requests refused by auth", label_value="unauthenticated"
        ),
        "invalid_credentials": _c(
            "auth_refused", "requests refused by auth", label_value="invalid_credentials"
        ),
        "forbidden": _c("auth_refused", "requests refused by auth", label_value="forbidden"),
    },
    "sinks": _SINK,
}
# Keys /stats shows that /metrics leaves out on purpose (see the module docstring).
SKIPPED = frozenset({("batcher", "dropped_total"), ("sinks", "last_error")})

_Family = CounterMetricFamily | GaugeMetricFamily | UnknownMetricFamily
Sections = Callable[[], Mapping[str, Mapping[str, Any]]]


class _Families:
    """Families by name, so the same metric from several sinks is one family."""

    def __init__(self) -> None:
        self.by_name: dict[str, _Family] = {}

    def add(self, spec: Spec | None, name: str, labels: dict[str, str], value: float) -> None:
        family = self.by_name.get(name)
        if family is None:
            documentation = spec.help if spec else f"{name} (not in the catalogue: untyped)"
            cls = (
                UnknownMetricFamily
                if spec is None
                else CounterMetricFamily
                if spec.kind == "counter"
                else GaugeMetricFamily
            )
            family = self.by_name[name] = cls(name, documentation, labels=list(labels))
        family.add_metric(list(labels.values()), value * (spec.scale if spec else 1.0))


class _StatsCollector:
    def __init__(self, sections: Sections) -> None:
        self._sections = sections

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        for section, stats in self._sections().items():
            if section == "sinks":
                for sink, sink_stats in stats.items():
                    if isinstance(sink_stats, Mapping):
                        self._add(families, section, sink_stats, {"sink": str(sink)})
            else:
                self._add(families, section, stats, {})
        yield from families.by_name.values()

    @staticmethod
    def _add(
        families: _Families, section: str, stats: Mapping[str, Any], labels: dict[str, str]
    ) -> None:
        catalogue = CATALOGUE.get(section, {})
        for key, value in stats.items():
            if (section, key) in SKIPPED:
                continue
            spec = catalogue.get(key)
            stem = "sink_" if section == "sinks" else f"{section}_"
            name = PREFIX + (spec.name if spec else _UNSAFE.sub("_", stem + key))
            if isinstance(value, Mapping):
                label = spec.label if spec and spec.label else "key"
                for part, number in value.items():
                    if _is_number(number):
                        families.add(spec, name, {**labels, label: str(part)}, float(number))
            elif _is_number(value):
                parts = {"reason": spec.label_value} if spec and spec.label_value else {}
                families.add(spec, name, {**labels, **parts}, float(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)  # bool is an int: healthy is 1 or 0


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
