"""``sse-batcher demo``: the service on the embedded SQLite journal, with simulated workers.

::

    sse-batcher demo                      # until Ctrl-C; open http://127.0.0.1:8000/
    sse-batcher demo --duration 30        # 30 s, then a summary (for scripts)

It takes every ``serve`` option (``--host``, ``--port``, ``--db``, ``--window-ms`` ...).
Without ``--db`` the journal lives in a temporary directory removed at exit, so each
run starts from an empty stream. Ctrl-C (or the end of ``--duration``) stops the
workers, drains the batcher and prints what batching saved.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.applications import Starlette

from sse_batcher._exceptions import ConfigError
from sse_batcher.batching._stats import BatcherStats

__all__ = ["DemoSummary", "add_parser", "run"]

_PROG = "sse-batcher demo"


def add_parser(subparsers: Any) -> None:
    """Add the ``demo`` subcommand (sets ``func``) to an argparse subparsers object.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.
    """
    from sse_batcher.cli._main import add_server_options

    parser = subparsers.add_parser(
        "demo",
        help="run the service with simulated timelapse workers and the live dashboard",
        description="Run the service on the embedded SQLite journal with three simulated "
        "workers (thumbnails, overlays, a scheduler with bursts), open the dashboard and "
        "watch events batch live. Ctrl-C drains and prints a summary. Without --db the "
        "journal is a temporary file removed at exit.",
    )
    parser.add_argument(
        "--duration",
        type=_duration,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds and print the summary (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="make the simulated jobs reproducible"
    )
    parser.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        help="time compression for the workers: 2 = twice the event rate (default: 1)",
    )
    add_server_options(parser)
    parser.set_defaults(func=run)


def _duration(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _speed(text: str) -> float:
    value = float(text)
    if not 0.01 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 0.01 and 1000, got {text}")
    return value


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What a demo run did, from the batcher's counters.

    Attributes:
        seconds: how long the workers ran.
        seed: the seed of the simulated jobs (pass it back with ``--seed``).
        stats: the batcher's counters after the drain.
    """

    seconds: float
    seed: int
    stats: BatcherStats

    @staticmethod
    def _saved(part: int, whole: int) -> str:
        return f"{100 * (1 - part / whole):.0f}% saved" if whole else "-"

    def text(self) -> str:
        """The summary printed at exit."""
        s = self.stats
        messages_saved = self._saved(s.messages_out, s.events_in)
        writes_saved = self._saved(s.writes, s.events_in)
        rows = [
            f"Demo summary ({self.seconds:.1f} s, seed {self.seed}):",
            f"  events in        {s.events_in:>7}",
            f"  messages out     {s.messages_out:>7}   ({messages_saved})",
            f"  database writes  {s.writes:>7}   ({writes_saved}:"
            " one transaction per flush instead of one per event)",
            f"  batch events     {s.batches_created:>7}   "
            f"(mean {s.mean_batch_size:.1f} events per message)",
            f"  coalesced        {s.coalesced:>7}   (progress updates superseded within a window)",
            f"  dropped          {s.dropped_total:>7}",
        ]
        return "\n".join(rows)


def _shown_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _build(args: argparse.Namespace, db: str) -> tuple[Starlette, dict[str, Any]]:
    """The service with the demo rules, its lifespan extended to run the workers."""
    from sse_batcher.batching._batcher import SSEEventBatcher
    from sse_batcher.cli._demo_workers import DEMO_RULES, DemoWorkers
    from sse_batcher.cli._main import server_settings
    from sse_batcher.journals.sqlite._journal import SQLiteJournal
    from sse_batcher.service._app import create_app

    settings = server_settings(args)
    if settings.redis_url is not None:
        raise ConfigError("the demo runs on the embedded SQLite journal; drop --redis-url")
    journal = SQLiteJournal(db, retention_seconds=settings.retention_days * 86400)
    batcher = SSEEventBatcher(
        journal,
        rules=DEMO_RULES,
        window=settings.window_ms / 1000,
        max_batch=settings.max_batch,
        dead_letter_path=settings.dead_letter_path,
    )
    app = create_app(
        batcher,
        token=settings.token,
        subscribe_token=settings.subscribe_token,
        cors_origins=settings.cors_origin,
        max_subscribers=settings.max_subscribers,
        heartbeat=settings.heartbeat,
        durable_ingest=settings.durable_ingest,
    )
    run_state: dict[str, Any] = {"seed": args.seed, "started": None, "stopped": None}
    service_lifespan = app.router.lifespan_context
    url = f"http://{_shown_host(settings.host)}:{settings.port}/"

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The service opens the journal and the batcher first; the workers stop before
        # it drains them, so everything they emitted is written.
        async with (
            service_lifespan(app),
            DemoWorkers(batcher, seed=args.seed, speed=args.speed) as workers,
            anyio.create_task_group() as tg,
        ):
            run_state["seed"] = workers.seed
            run_state["started"] = anyio.current_time()
            print(f"Open {url} to watch events batch live (Ctrl-C to stop)", flush=True)
            if args.duration is not None:
                tg.start_soon(_stop_after, args.duration)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                run_state["stopped"] = anyio.current_time()

    app.router.lifespan_context = lifespan
    return app, run_state


async def _stop_after(seconds: float) -> None:
    await anyio.sleep(seconds)
    # The same path as Ctrl-C: uvicorn's handler starts the graceful shutdown.
    signal.raise_signal(signal.SIGINT)


def run(args: argparse.Namespace) -> int:
    """Run the demo until Ctrl-C or ``--duration``; print the URL, then a summary.

    Args:
        args: the parsed ``demo`` options.
    """
    from sse_batcher.cli._main import run_server, server_settings

    # Quieter than serve by default: the dashboard's requests would fill the terminal.
    if args.log_level is None and "SSE_BATCHER_LOG_LEVEL" not in os.environ:
        args.log_level = "warning"
    with tempfile.TemporaryDirectory(prefix="sse-batcher-demo-") as tmp:
        if args.db is None and "SSE_BATCHER_DB" not in os.environ:
            args.db = os.path.join(tmp, "demo_events.db")
        settings = server_settings(args)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        app, state = _build(args, settings.db)
        if not run_server(
            app,
            settings.host,
            settings.port,
            log_level=settings.log_level,
            send_timeout=settings.send_timeout,
        ):
            print(f"{_PROG}: error: the server did not start (see the log above)", file=sys.stderr)
            return 1
    started, stopped = state["started"], state["stopped"]
    summary = DemoSummary(
        seconds=(stopped - started) if started is not None and stopped is not None else 0.0,
        seed=state["seed"],
        stats=app.state.batcher.stats(),
    )
    print(summary.text(), flush=True)
    return 0
