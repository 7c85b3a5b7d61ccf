"""sse_batcher: merge bursts of worker events into batch events, journal each batch
in one write, and stream them to browsers over resumable Server-Sent Events."""

from __future__ import annotations

from sse_batcher._exceptions import (
    BatcherClosed,
    ConfigError,
    InvalidCursor,
    InvalidEvent,
    JournalError,
    JournalUnavailable,
    PublishError,
    QueueFull,
    SSEBatcherError,
)
from sse_batcher.batching._aggregation import AggregationRule, batch_type_for
from sse_batcher.batching._batcher import SSEEventBatcher
from sse_batcher.batching._events import EncodedEvent, Event, Position, StoredEvent
from sse_batcher.batching._journal import Journal, Resume
from sse_batcher.batching._sink import Sink
from sse_batcher.batching._sink_set import SinkSet
from sse_batcher.batching._stats import BatcherStats, WorkerInfo
from sse_batcher.journals.redis._journal import RedisJournal
from sse_batcher.journals.sqlite._journal import SQLiteJournal
from sse_batcher.publishing._async_publisher import AsyncRemotePublisher
from sse_batcher.publishing._model import PublisherStats, in_publisher_context
from sse_batcher.publishing._publisher import RemotePublisher
from sse_batcher.service._app import create_app
from sse_batcher.service._hub import Hub
from sse_batcher.sinks._archive import ArchiveSink
from sse_batcher.workers._log_handler import BatchLogHandler
from sse_batcher.workers._mixin import EmitStats, SSEBroadcasterMixin

__version__ = "0.1.0"

__all__ = [
    "AggregationRule",
    "ArchiveSink",
    "AsyncRemotePublisher",
    "BatchLogHandler",
    "BatcherClosed",
    "BatcherStats",
    "ConfigError",
    "EmitStats",
    "EncodedEvent",
    "Event",
    "Hub",
    "InvalidCursor",
    "InvalidEvent",
    "Journal",
    "JournalError",
    "JournalUnavailable",
    "Position",
    "PublishError",
    "PublisherStats",
    "QueueFull",
    "RedisJournal",
    "RemotePublisher",
    "Resume",
    "SQLiteJournal",
    "SSEBatcherError",
    "SSEBroadcasterMixin",
    "SSEEventBatcher",
    "Sink",
    "SinkSet",
    "StoredEvent",
    "WorkerInfo",
    "__version__",
    "batch_type_for",
    "create_app",
    "in_publisher_context",
]
