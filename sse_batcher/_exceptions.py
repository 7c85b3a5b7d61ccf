"""Every exception sse_batcher raises, under one root.

SSEBatcherError
├── ConfigError          invalid configuration (a range, a name, a path)
├── InvalidEvent         an event that breaks the validation rules (ValueError too)
├── InvalidCredential    a credential that claims to be one a verifier knows but is not
│                        valid (a forged, expired or wrong-audience JWT): HTTP 401
├── QueueFull            the pending queue is at its bound and the policy refused the event
├── BatcherClosed        a resource (batcher, journal, hub, sink) used when not open,
│                        or entered a second time
├── JournalError         the journal could not do what was asked
│   ├── JournalUnavailable   a transient failure (locked, disk full, Redis down): retried
│   └── InvalidCursor        an event id that this journal cannot parse
└── PublishError         a RemotePublisher gave up or the server rejected entries
"""

from __future__ import annotations

__all__ = [
    "BatcherClosed",
    "ConfigError",
    "InvalidCredential",
    "InvalidCursor",
    "InvalidEvent",
    "JournalError",
    "JournalUnavailable",
    "PublishError",
    "QueueFull",
    "SSEBatcherError",
]


class SSEBatcherError(Exception):
    """Root of every error raised by sse_batcher."""


class ConfigError(SSEBatcherError, ValueError):
    """A configuration value is out of range or malformed."""


class InvalidEvent(SSEBatcherError, ValueError):
    """An event failed validation; the message says which rule it broke."""


class InvalidCredential(SSEBatcherError):
    """A credential a verifier recognised (e.g. a JWT) failed its checks; the message
    says which (signature, expiry, audience, issuer, algorithm, claims)."""


class QueueFull(SSEBatcherError):
    """The pending queue is full and the overflow policy refused the event."""


class BatcherClosed(SSEBatcherError, RuntimeError):
    """A resource is not open: not yet started, already closed, or entered twice."""


class JournalError(SSEBatcherError):
    """The journal failed."""


class JournalUnavailable(JournalError):
    """A transient journal failure; the batcher retries and then dead-letters."""


class InvalidCursor(JournalError, ValueError):
    """An event id (``Last-Event-ID``, ``after=``) this journal cannot parse."""


class PublishError(SSEBatcherError):
    """A remote publish failed for good, or the server rejected entries."""
