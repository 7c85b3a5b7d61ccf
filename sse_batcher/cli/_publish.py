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

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

import click
import httpx
import orjson

from sse_batcher._exceptions import ConfigError, InvalidEvent
from sse_batcher.batching._events import Event
from sse_batcher.publishing._publisher import RemotePublisher

__all__ = ["EX_TEMPFAIL", "PublishArgs", "publish", "run"]

EX_TEMPFAIL = 75
_PROG = "sse-batcher publish"
_BACKPRESSURE = 5_000


@dataclass(frozen=True, slots=True)
class PublishArgs:
    """The ``publish`` command line, checked by click."""

    type: str
    url: str | None = None
    token: str | None = None
    source: str | None = None
    channel: str | None = None
    data: str | None = None
    spool: str | None = None
    retry_for: float = 10.0
    timeout: float = 10.0
    batch_size: int = 10
    flush_interval: float = 2.0


@click.command()
@click.argument("type", metavar="TYPE")
@click.option(
    "--url", envvar="SSE_BATCHER_URL", show_envvar=True, metavar="URL", help="The server's url."
)
@click.option(
    "--token", envvar="SSE_BATCHER_TOKEN", show_envvar=True, metavar="TOKEN", help="Bearer token."
)
@click.option("--source", metavar="NAME", help="Event source (default: <hostname>-<pid>).")
@click.option(
    "--channel",
    metavar="CHANNEL",
    help="The events' channel, e.g. user.42.jobs (default: default).",
)
@click.option("--data", metavar="JSON", help="The event's data, a JSON object.")
@click.option(
    "--spool",
    metavar="PATH",
    help="Keep undelivered events in this file and send them first next time "
    "(default: no spool; undelivered events are reported and lost).",
)
@click.option(
    "--retry-for",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to retry an unreachable server before giving up or spooling.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Per request.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    metavar="N",
    help="Events per request.",
)
@click.option(
    "--flush-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest wait for a batch to fill, for slow pipes.",
)
def publish(**params: Any) -> int:
    """Send events to a server: one, or JSON lines from stdin.

    Sends one event of type TYPE, or with TYPE '-' JSON lines from stdin (batched),
    to POST /events. Each stdin line is an object with type, and optionally source,
    channel, data and ts. Exit status: 0 all acknowledged, 1 something rejected or
    undelivered, 2 bad input, 75 undelivered events left in the --spool file.
    """
    return run(PublishArgs(**params))


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
    args: PublishArgs,
    *,
    stdin: IO[str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Run ``sse-batcher publish`` with parsed ``args``; return the exit status.

    Args:
        args: the checked command line.
        stdin: where ``-`` reads from (default ``sys.stdin``).
        transport: an httpx transport (tests).
    """
    url = args.url
    token = args.token or None
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
