"""``sse-batcher``: the command line (``serve``, plus ``demo`` and ``publish``).

Built on click: every ``serve`` option also reads an ``SSE_BATCHER_<NAME>``
environment variable (see ``sse_batcher/cli/_options.py``). Errors in the command
line or the environment are reported in one line with exit status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import click
from starlette.types import ASGIApp

from sse_batcher._exceptions import ConfigError, SSEBatcherError
from sse_batcher.cli._demo import demo
from sse_batcher.cli._options import ServerSettings, server_options
from sse_batcher.cli._publish import publish
from sse_batcher.cli._server import (
    GRACEFUL_SHUTDOWN_TIMEOUT,
    check_paths,
    configure_logging,
    listening_socket,
    serve_service,
)
from sse_batcher.embedding._service import Service
from sse_batcher.service._settings import ServiceSettings

__all__ = ["cli", "main"]

logger = logging.getLogger("sse_batcher.cli")


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="sse_batcher", prog_name="sse-batcher")
def cli() -> None:
    """Batch worker events, journal them and stream them over resumable SSE."""


@cli.command()
@server_options()
def serve(**params: Any) -> int:
    """Run the service (SSE stream, ingest, dashboard) with uvicorn.

    SIGINT/SIGTERM end open streams, drain the batcher and print what was written.
    Every option also reads the environment variable shown beside it.
    """
    settings = ServerSettings.from_params(params)
    check_paths(settings.service)
    configure_logging(settings.log_level)
    if settings.workers > 1:
        return _serve_workers(settings)
    service = Service(settings.service)
    if not serve_service(service, settings):
        click.echo(
            "sse-batcher serve: error: the server did not start (see the log above)", err=True
        )
        return 1
    stats = service.batcher.stats()
    click.echo(
        f"sse-batcher: stopped; {stats.events_in} events in, {stats.messages_out} messages out "
        f"({stats.members_out} events written in {stats.writes} writes), "
        f"{stats.dropped_total} dropped, {stats.dead_letter_pending} dead-lettered"
    )
    return 0


def build_worker_app(settings: ServiceSettings, slot: int) -> ASGIApp:
    """One ``--workers`` process's app: its journal polls for the other workers'
    commits; its dead-letter file and archive tree are its own (see ``_workers.py``)."""
    from sse_batcher.cli._workers import TAIL_POLL_INTERVAL, slot_path

    archive = settings.archive
    service = Service(
        settings.with_values(
            tail_poll_interval=TAIL_POLL_INTERVAL,
            archive=None if archive is None else os.path.join(archive, f"w{slot}"),
            dead_letter=slot_path(settings.dead_letter_path, slot),
        )
    )
    return service.app


def _serve_workers(settings: ServerSettings) -> int:
    from sse_batcher.cli._workers import WorkerAppFactory, run_workers

    factory = WorkerAppFactory(
        partial(build_worker_app, settings.service),
        settings.service.dead_letter_path,
        settings.log_level,
    )
    try:
        sock = listening_socket(settings.host, settings.port, send_timeout=settings.send_timeout)
    except OSError as exc:
        click.echo(f"sse-batcher serve: error: cannot listen: {exc}", err=True)
        return 1
    if not run_workers(
        factory,
        sock,
        workers=settings.workers,
        log_level=settings.log_level,
        graceful_timeout=GRACEFUL_SHUTDOWN_TIMEOUT,
    ):
        click.echo(
            "sse-batcher serve: error: the workers did not start (see the log above)", err=True
        )
        return 1
    click.echo(f"sse-batcher: stopped {settings.workers} workers")
    return 0


cli.add_command(demo)
cli.add_command(publish)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sse-batcher`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args, prog_name="sse-batcher", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "sse-batcher"
        click.echo(f"{where}: error: {exc.format_message()}", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"sse-batcher: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except click.Abort:
        return 130
    except ConfigError as exc:
        click.echo(f"{_command(args)}: error: {exc}", err=True)
        return 2
    except SSEBatcherError as exc:
        click.echo(f"{_command(args)}: error: {exc}", err=True)
        return 1
    return result if isinstance(result, int) else 0


def _command(args: Sequence[str]) -> str:
    names = [name for name in args if name in cli.commands]
    return f"sse-batcher {names[0]}" if names else "sse-batcher"
