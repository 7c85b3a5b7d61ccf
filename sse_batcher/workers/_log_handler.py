"""``BatchLogHandler``: standard ``logging`` records as live events.

``logger.info("Creating worktree")`` inside a job becomes a ``LOG_INFO`` event
with data ``{"message", "logger", "level", ...extra}`` and shows up on the stream
like any other event, batched with its neighbours. Error records carry
``"level": "error"``, which the batcher treats as a priority event, so they are
delivered at once instead of waiting for the window.

A logging call must never stall or crash the code that made it: the handler only
queues (the batcher's ``emit``, a ``RemotePublisher``'s ``publish`` or an
``AsyncRemotePublisher``'s ``publish_nowait``, all non-blocking), counts what it
could not queue, and never prints a traceback for a full queue. It ignores records
from ``sse_batcher``'s own loggers and records logged while it is already handling
one on the same thread, so the batcher logging about an overload can never feed
itself.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import orjson

from sse_batcher._exceptions import BatcherClosed, PublishError, QueueFull
from sse_batcher.batching._events import check_channel

__all__ = ["BatchLogHandler", "EventEmitter", "EventNowaitPublisher", "EventPublisher"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",  # added in Python 3.12
}
# The event data limit is 64 KiB; a huge message or traceback must not cost the record.
_MAX_TEXT = 16 * 1024
_INTERNAL_LOGGER = "sse_batcher"


@runtime_checkable
class EventEmitter(Protocol):
    """Something with the batcher's ``emit`` (``SSEEventBatcher``)."""

    def emit(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str,
        uid: str | None = None,
        ts: float | None = None,
        channel: str = ...,
    ) -> None: ...


@runtime_checkable
class EventPublisher(Protocol):
    """Something with ``publish`` (``RemotePublisher``, for workers in other processes)."""

    def publish(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
        ts: float | None = None,
        channel: str | None = None,
    ) -> None: ...


@runtime_checkable
class EventNowaitPublisher(Protocol):
    """Something with ``publish_nowait`` (``AsyncRemotePublisher``)."""

    def publish_nowait(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
        ts: float | None = None,
        channel: str | None = None,
    ) -> None: ...


_Target = EventEmitter | EventNowaitPublisher | EventPublisher
_Send = Callable[[str, dict[str, Any], str, float], None]


def _truncate(text: str) -> str:
    if len(text) <= _MAX_TEXT:
        return text
    return text[:_MAX_TEXT] + f"... [{len(text) - _MAX_TEXT} characters cut]"


def _is_json(value: object) -> bool:
    try:
        orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return True


def _event_type(levelname: str) -> str:
    # Custom level names may hold spaces or punctuation ("Level 5"); keep types tidy.
    return "LOG_" + "".join(c if c.isalnum() else "_" for c in levelname.upper())


class BatchLogHandler(logging.Handler):
    """A logging handler that turns records into events of type ``LOG_<LEVEL>``.

    Event data: ``message`` (``record.getMessage()``), ``logger`` (the logger's
    name), ``level`` (the level name in lower case: ``"info"``, ``"error"``), every
    JSON-serialisable attribute passed with ``extra=`` (others are left out),
    ``exception`` (the formatted traceback) when the record has ``exc_info`` and
    ``stack`` when it has ``stack_info``. The event's ``ts`` is the record's time.

    ::

        handler = BatchLogHandler(batcher, source="overlay_worker")
        logging.getLogger("timelapse").addHandler(handler)
        log.info("Rendering overlay for camera %d", 7, extra={"job_id": 42})

    Args:
        target: an ``SSEEventBatcher`` (anything with ``emit(type, data, *, source)``),
            a ``RemotePublisher`` (a synchronous ``publish(type, data, *, source)``)
            or an ``AsyncRemotePublisher`` (``publish_nowait``, same arguments).
        source: the event source; default the record's logger name.
        channel: the channel of the events; default the target's (``"default"``).
        level: the handler's threshold, as for any ``logging.Handler``.
    """

    def __init__(
        self,
        target: _Target,
        *,
        source: str | None = None,
        channel: str | None = None,
        level: int = logging.INFO,
    ) -> None:
        super().__init__(level)
        self.target = target
        self.source = source
        self.channel = None if channel is None else check_channel(channel)
        # Only given when set, so a target without channels (an older emitter) still works.
        self._channel_kw: dict[str, str] = {} if channel is None else {"channel": channel}
        self._send = self._sender(target)
        self._local = threading.local()
        self._counts_lock = threading.Lock()
        self._counts = {
            "records_sent": 0,
            "dropped_full": 0,
            "dropped_closed": 0,
            "dropped_recursive": 0,
            "dropped_error": 0,
            "errors": 0,
        }

    def _sender(self, target: _Target) -> _Send:
        kw = self._channel_kw
        if isinstance(target, EventEmitter):
            emitter = target

            def send_emit(type: str, data: dict[str, Any], source: str, ts: float) -> None:
                emitter.emit(type, data, source=source, ts=ts, **kw)

            return send_emit
        if isinstance(target, EventNowaitPublisher):
            # An async publisher's publish() is a coroutine; a logging call cannot await.
            nowait = target

            def send_nowait(type: str, data: dict[str, Any], source: str, ts: float) -> None:
                nowait.publish_nowait(type, data, source=source, ts=ts, **kw)

            return send_nowait
        if isinstance(target, EventPublisher) and not inspect.iscoroutinefunction(target.publish):
            publisher = target

            def send_publish(type: str, data: dict[str, Any], source: str, ts: float) -> None:
                publisher.publish(type, data, source=source, ts=ts, **kw)

            return send_publish
        raise TypeError(
            "BatchLogHandler needs an object with emit(), publish_nowait() or a synchronous "
            f"publish(), not {type(target).__name__}"
        )

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record as an event; never blocks, never raises into the caller."""
        name = record.name
        if name == _INTERNAL_LOGGER or name.startswith(_INTERNAL_LOGGER + "."):
            # sse_batcher's own warnings (an overloaded queue, a failing journal) would
            # become events that feed the very condition being reported.
            return
        if getattr(self._local, "busy", False):
            # Something on the emit path logged (a batcher warning, a publisher retry):
            # handling it would recurse.
            self._count("dropped_recursive")
            return
        self._local.busy = True
        try:
            type_, data = self.record_to_event(record)
            self._send(type_, data, self.source or record.name, record.created)
        except QueueFull:
            self._count("dropped_full")
        except BatcherClosed:
            self._count("dropped_closed")
        except PublishError:
            self._count("dropped_error")
        except Exception:
            # A bad format string or an unusable record: the standard logging
            # behaviour (report on stderr when logging.raiseExceptions, never raise).
            self._count("errors")
            self.handleError(record)
        else:
            self._count("records_sent")
        finally:
            self._local.busy = False

    def record_to_event(self, record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
        """The event type and data for one record (override to reshape events).

        Args:
            record: the log record.
        """
        data: dict[str, Any] = {
            key: value
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRS and not key.startswith("_") and _is_json(value)
        }
        # The three fixed fields win over an extra of the same name.
        data["message"] = _truncate(record.getMessage())
        data["logger"] = record.name
        data["level"] = record.levelname.lower()
        if record.exc_info and record.exc_info[0] is not None:
            formatter = self.formatter or logging.Formatter()
            data["exception"] = _truncate(formatter.formatException(record.exc_info))
        elif record.exc_text:
            data["exception"] = _truncate(record.exc_text)
        if record.stack_info:
            data["stack"] = _truncate(record.stack_info)
        return _event_type(record.levelname), data

    def stats(self) -> dict[str, int]:
        """Counters: ``records_sent``, ``dropped_full`` (queue full), ``dropped_closed``
        (target closed), ``dropped_recursive`` (logged on the handler's own path),
        ``dropped_error`` (the target raised ``PublishError``), ``errors`` (records
        that could not be turned into events; reported through ``handleError``)."""
        with self._counts_lock:
            return dict(self._counts)

    def _count(self, key: str) -> None:
        with self._counts_lock:
            self._counts[key] += 1
