"""sse_batcher: merge bursts of worker events into batch events, journal each batch
in one write, and stream them to browsers over resumable Server-Sent Events.

Public names load on first use (PEP 562 module ``__getattr__``): a worker that only
publishes (``RemotePublisher``, ``SSEBroadcasterMixin``, ``Event``) never imports the
server, Redis or metrics modules, nor their dependencies, which are optional extras.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sse_batcher._exceptions import (
    BatcherClosed,
    ConfigError,
    InvalidCredential,
    InvalidCursor,
    InvalidEvent,
    JournalError,
    JournalUnavailable,
    PublishError,
    QueueFull,
    SSEBatcherError,
)

if TYPE_CHECKING:
    # What mypy and IDEs see; at run time the same names come from _LAZY below.
    from sse_batcher.batching._batcher import SSEEventBatcher
    from sse_batcher.batching._events import EncodedEvent, Event, Position, StoredEvent
    from sse_batcher.batching._journal import Journal, Resume
    from sse_batcher.batching._rules import AggregationRule, batch_type_for
    from sse_batcher.batching._sink import Sink
    from sse_batcher.batching._sink_set import SinkSet
    from sse_batcher.batching._stats import BatcherStats, WorkerInfo
    from sse_batcher.embedding._service import Service
    from sse_batcher.journals.redis._journal import RedisJournal
    from sse_batcher.journals.sqlite._journal import SQLiteJournal
    from sse_batcher.publishing._async_publisher import AsyncRemotePublisher
    from sse_batcher.publishing._model import PublisherStats, in_publisher_context
    from sse_batcher.publishing._publisher import RemotePublisher
    from sse_batcher.service._app import create_app
    from sse_batcher.service._hub import Hub
    from sse_batcher.service._jwt import JWTVerifier
    from sse_batcher.service._settings import ServiceSettings
    from sse_batcher.sinks._archive import ArchiveSink
    from sse_batcher.workers._log_handler import BatchLogHandler
    from sse_batcher.workers._mixin import EmitStats, SSEBroadcasterMixin

__version__ = "0.1.0"

# public name -> the private module defining it
_LAZY: dict[str, str] = {
    "AggregationRule": "sse_batcher.batching._rules",
    "ArchiveSink": "sse_batcher.sinks._archive",
    "AsyncRemotePublisher": "sse_batcher.publishing._async_publisher",
    "BatchLogHandler": "sse_batcher.workers._log_handler",
    "BatcherStats": "sse_batcher.batching._stats",
    "EmitStats": "sse_batcher.workers._mixin",
    "EncodedEvent": "sse_batcher.batching._events",
    "Event": "sse_batcher.batching._events",
    "Hub": "sse_batcher.service._hub",
    "JWTVerifier": "sse_batcher.service._jwt",
    "Journal": "sse_batcher.batching._journal",
    "Position": "sse_batcher.batching._events",
    "PublisherStats": "sse_batcher.publishing._model",
    "RedisJournal": "sse_batcher.journals.redis._journal",
    "RemotePublisher": "sse_batcher.publishing._publisher",
    "Resume": "sse_batcher.batching._journal",
    "SQLiteJournal": "sse_batcher.journals.sqlite._journal",
    "SSEBroadcasterMixin": "sse_batcher.workers._mixin",
    "SSEEventBatcher": "sse_batcher.batching._batcher",
    "Service": "sse_batcher.embedding._service",
    "ServiceSettings": "sse_batcher.service._settings",
    "Sink": "sse_batcher.batching._sink",
    "SinkSet": "sse_batcher.batching._sink_set",
    "StoredEvent": "sse_batcher.batching._events",
    "WorkerInfo": "sse_batcher.batching._stats",
    "batch_type_for": "sse_batcher.batching._rules",
    "create_app": "sse_batcher.service._app",
    "in_publisher_context": "sse_batcher.publishing._model",
}

# third-party module -> the extra that installs it (for a helpful ImportError)
_EXTRAS = {
    "redis": "redis",
    "httpx": "publisher",
    "prometheus_client": "metrics",
    "uvicorn": "server",
    "click": "server",
    "jwt": "jwt",
    "cryptography": "jwt",
}

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
    "InvalidCredential",
    "InvalidCursor",
    "InvalidEvent",
    "JWTVerifier",
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
    "Service",
    "ServiceSettings",
    "Sink",
    "SinkSet",
    "StoredEvent",
    "WorkerInfo",
    "__version__",
    "batch_type_for",
    "create_app",
    "in_publisher_context",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'sse_batcher' has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        raise ModuleNotFoundError(
            f"sse_batcher.{name} needs {exc.name}: pip install 'sse_batcher[{extra}]'",
            name=exc.name,
        ) from exc
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
