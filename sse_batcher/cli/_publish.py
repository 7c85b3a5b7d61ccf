"""``sse-batcher publish``: send events to a server from a shell.

::

    sse-batcher publish --url http://host:8000 JOB_STARTED --source cron --data '{"job_id": 7}'
    tail -F app.jsonl | sse-batcher publish --url http://host:8000 --source app -

Exit status: 0 when the server acknowledged every event, 1 when something was
rejected or could not be delivered (each reason on stderr), 2 for bad input on the
command line, 75 (``EX_TEMPFAIL``) when undelivered events were left in the
``--spool`` file for the next run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from typing import IO, Any

import httpx
import orjson

from sse_batcher._exceptions import ConfigError, InvalidEvent
from sse_batcher.batching._events import Event
from sse_batcher.publishing._publisher import RemotePublisher

__all__ = ["EX_TEMPFAIL", "add_parser", "run"]

EX_TEMPFAIL = 75
_PROG = "sse-batcher publish"
_BACKPRESSURE = 5_000


def add_parser(subparsers: Any) -> None:
    """Add the ``publish`` subcommand (sets ``func``) to an argparse subparsers object.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.
    """
    parser = subparsers.add_parser(
        "publish",
        help="send events to a server (one, or JSON lines from stdin)",
        description="Send one event, or with TYPE '-' JSON lines from stdin (batched), to "
        "POST /events. Each stdin line is an object with type, and optionally source, "
        "channel, data and ts. Exit status: 0 all acknowledged, 1 something rejected or "
        "undelivered, 2 bad input, 75 undelivered events left in the --spool file.",
    )
    parser.add_argument("type", metavar="TYPE", help="the event type, or - to read JSON lines")
    parser.add_argument(
        "--url", help="the server's base url (default: env SSE_BATCHER_URL)", metavar="URL"
    )
    parser.add_argument(
        "--token", help="bearer token (default: env SSE_BATCHER_TOKEN)", metavar="TOKEN"
    )
    parser.add_argument("--source", help="event source (default: <hostname>-<pid>)")
    parser.add_argument(
        "--channel", help="the events' channel, e.g. user.42.jobs (default: default)"
    )
    parser.add_argument("--data", help="the event's data, a JSON object", metavar="JSON")
    parser.add_argument(
        "--spool",
        metavar="PATH",
        help="keep undelivered events in this file and send them first next time "
        "(default: no spool; undelivered events are reported and lost)",
    )
    parser.add_argument(
        "--retry-for",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to retry an unreachable server before giving up or spooling (default: 10)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="per request (default: 10)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=10, metavar="N", help="events per request (default: 10)"
    )
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="longest wait for a batch to fill, for slow pipes (default: 2)",
    )
    parser.set_defaults(func=run)


def _error(message: str) -> None:
    print(f"{_PROG}: {message}", file=sys.stderr)


def _lines(
    stream: IO[str], source: str | None, channel: str | None
) -> Iterable[tuple[int, tuple[Event, str | None] | str]]:
    """(line number, (event, its source or None)) per non-blank line, or (number, error)."""
    for number, raw in enumerate(stream, 1):
        if not raw.strip():
            continue
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield number, f"not JSON ({exc})"
            continue
        if not isinstance(entry, dict):
            yield number, "not a JSON object"
            continue
        line_source = entry.get("source") or source
        try:
            event = _event(
                entry.get("type"),
                entry.get("data"),
                line_source,
                entry.get("ts"),
                entry.get("channel") or channel,
            )
        except InvalidEvent as exc:
            yield number, str(exc)
        else:
            yield number, (event, line_source)


def _event(type: Any, data: Any, source: str | None, ts: Any, channel: str | None = None) -> Event:
    if data is not None and not isinstance(data, dict):
        raise InvalidEvent("data must be a JSON object")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
        raise InvalidEvent("ts must be a number (Unix time in seconds)")
    # The source is checked here only when given; the publisher fills in its default.
    return Event.create(type, data, source=source or "-", ts=ts, channel=channel or "default")


def run(
    args: argparse.Namespace,
    *,
    stdin: IO[str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Run ``sse-batcher publish`` with parsed ``args``; return the exit status.

    Args:
        args: from the parser :func:`add_parser` made.
        stdin: where ``-`` reads from (default ``sys.stdin``).
        transport: an httpx transport (tests).
    """
    url = args.url or os.environ.get("SSE_BATCHER_URL")
    token = args.token or os.environ.get("SSE_BATCHER_TOKEN") or None
    if not url:
        _error("error: no server: pass --url or set SSE_BATCHER_URL")
        return 2
    single: Event | None = None
    if args.type != "-":
        try:
            data = orjson.loads(args.data) if args.data is not None else None
            single = _event(args.type, data, args.source, None, args.channel)
        except orjson.JSONDecodeError as exc:
            _error(f"error: --data is not JSON: {exc}")
            return 2
        except InvalidEvent as exc:
            _error(f"error: {exc}")
            return 2
    elif args.data is not None:
        _error("error: --data goes with a TYPE, not with - (stdin)")
        return 2
    try:
        publisher = RemotePublisher(
            url,
            token=token,
            source=args.source,
            max_batch_size=args.batch_size,
            flush_interval=args.flush_interval,
            spool_after=args.retry_for,
            spool=args.spool is not None,
            spool_path=args.spool,
            max_buffer_events=max(10_000, args.batch_size),
            timeout=args.timeout,
            max_backoff=min(5.0, max(args.retry_for / 4, 0.1)),
            transport=transport,
        )
    except ConfigError as exc:
        _error(f"error: {exc}")
        return 2
    bad_lines = 0
    with publisher:
        if single is not None:
            publisher.publish(single.type, single.data, source=args.source, channel=single.channel)
        else:
            for number, item in _lines(stdin or sys.stdin, args.source, args.channel):
                if isinstance(item, str):
                    bad_lines += 1
                    _error(f"line {number}: skipped: {item}")
                    continue
                event, source = item
                publisher.publish(
                    event.type, event.data, source=source, ts=event.ts, channel=event.channel
                )
                if number % 1000 == 0 and publisher.stats().buffered > _BACKPRESSURE:
                    # A pipe can outrun the server: wait rather than overflow the buffer.
                    publisher.flush()
    return _report(publisher, bad_lines, args.spool)


def _report(publisher: RemotePublisher, bad_lines: int, spool: str | None) -> int:
    stats = publisher.stats()
    status = 0
    if stats.rejected or bad_lines:
        status = 1
        _error(f"{stats.rejected + bad_lines} event(s) rejected:")
        for reason in stats.rejected_reasons:
            print(f"  {reason}", file=sys.stderr)
    if stats.dropped:
        status = 1
        reason = stats.last_error or "unknown error"
        _error(f"{stats.dropped} event(s) could not be delivered: {reason}")
    if stats.spool_pending:
        status = status or EX_TEMPFAIL
        _error(
            f"{stats.spool_pending} event(s) could not be delivered yet "
            f"({stats.last_error}); they are in {publisher.spool_path} and the next "
            f"run with --spool {spool} sends them first"
        )
    return status
