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

import os
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import click
from starlette.applications import Starlette
from starlette.routing import Mount

from sse_batcher._exceptions import ConfigError
from sse_batcher.batching._stats import BatcherStats
from sse_batcher.cli._options import (
    Checked,
    ServerSettings,
    number_in,
    positive_float,
    server_options,
)
from sse_batcher.cli._server import check_paths, configure_logging, serve_service, shown_url
from sse_batcher.embedding._service import Service

__all__ = ["DemoSummary", "demo"]

_PROG = "sse-batcher demo"


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


def _build(
    settings: ServerSettings, *, seed: int | None, speed: float
) -> tuple[Service, Starlette, dict[str, Any]]:
    """The service with the demo rules, embedded in an app whose lifespan runs the workers."""
    from sse_batcher.cli._demo_workers import DEMO_RULES, DemoWorkers

    if settings.service.redis_url is not None:
        raise ConfigError("the demo runs on the embedded SQLite journal; drop --redis-url")
    service = Service(settings.service, rules=DEMO_RULES)
    run_state: dict[str, Any] = {"seed": seed, "started": None, "stopped": None}
    url = shown_url(settings.host, settings.port) + "/"

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The way an application embeds the service: it enters the service (journal,
        # hub, batcher) first; the workers stop before it drains, so everything they
        # emitted is written.
        async with (
            service,
            DemoWorkers(service.batcher, seed=seed, speed=speed) as workers,
        ):
            run_state["seed"] = workers.seed
            run_state["started"] = anyio.current_time()
            print(f"Open {url} to watch events batch live (Ctrl-C to stop)", flush=True)
            try:
                yield
            finally:
                run_state["stopped"] = anyio.current_time()

    host = Starlette(routes=[Mount("/", service.app)], lifespan=lifespan)
    return service, host, run_state


@click.command()
@click.option(
    "--duration",
    type=Checked(positive_float, "--duration"),
    default=None,
    metavar="SECONDS",
    help="Stop after this many seconds and print the summary (default: run until Ctrl-C).",
)
@click.option("--seed", type=int, default=None, help="Make the simulated jobs reproducible.")
@click.option(
    "--speed",
    type=Checked(number_in(0.01, 1000), "--speed"),
    default=1.0,
    show_default=True,
    metavar="FACTOR",
    help="Time compression for the workers: 2 = twice the event rate.",
)
@server_options(db=None, log_level="warning")
def demo(duration: float | None, seed: int | None, speed: float, **params: Any) -> int:
    """Run the service with simulated timelapse workers and the live dashboard.

    Three simulated workers (thumbnails, overlays, a scheduler with bursts) emit
    events on the embedded SQLite journal: open the dashboard and watch them batch
    live. Ctrl-C (or the end of --duration) drains and prints a summary. Without
    --db the journal is a temporary file removed at exit.
    """
    with tempfile.TemporaryDirectory(prefix="sse-batcher-demo-") as tmp:
        if params["db"] is None:
            params["db"] = os.path.join(tmp, "demo_events.db")
        settings = ServerSettings.from_params(params)
        configure_logging(settings.log_level)
        check_paths(settings.service)
        service, app, state = _build(settings, seed=seed, speed=speed)
        if not serve_service(service, settings, app=app, stop_after=duration):
            print(f"{_PROG}: error: the server did not start (see the log above)", file=sys.stderr)
            return 1
    started_at, stopped_at = state["started"], state["stopped"]
    summary = DemoSummary(
        seconds=(stopped_at - started_at)
        if started_at is not None and stopped_at is not None
        else 0.0,
        seed=state["seed"],
        stats=service.batcher.stats(),
    )
    print(summary.text(), flush=True)
    return 0
