"""sse_batcher: merge bursts of worker events into batch events, journal each batch
in one write, and stream them to browsers over resumable Server-Sent Events."""

from __future__ import annotations

from ._aggregation import AggregationRule, batch_type_for
from ._app import create_app
from ._archive import ArchiveSink
from ._async_publisher import AsyncRemotePublisher
from ._batcher import SSEEventBatcher
from ._events import EncodedEvent, Event, Position, StoredEvent
from ._exceptions import (
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
from ._hub import Hub
from ._journal import Journal, Resume
from ._log_handler import BatchLogHandler
from ._mixin import EmitStats, SSEBroadcasterMixin
from ._publish_model import PublisherStats, in_publisher_context
from ._publisher import RemotePublisher
from ._redis_journal import RedisJournal
from ._sink import Sink, SinkSet
from ._sqlite_journal import SQLiteJournal
from ._stats import BatcherStats, WorkerInfo

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
