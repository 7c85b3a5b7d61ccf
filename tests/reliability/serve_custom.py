"""A server process with settings the CLI does not expose, for the reliability tests.

``python -m tests.reliability.serve_custom '<json>'`` builds a SQLite journal (made
slow when ``append_delay_per_event`` is set), a batcher and ``create_app`` from the
JSON settings and serves it with the CLI's ``run_server`` (uvloop, httptools,
graceful drain on SIGTERM). :class:`CustomServer` runs it like ``ServerProcess``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from sse_batcher import EncodedEvent, SQLiteJournal, SSEEventBatcher, StoredEvent, create_app
from sse_batcher.cli._server import run_server

from ..servers import ServerProcess

ROOT = Path(__file__).resolve().parents[2]


class SlowJournal:
    """A SQLite journal whose appends take ``per_event`` seconds per event longer:
    a journal slower than the producers (the real SQLite write still happens)."""

    def __init__(self, inner: SQLiteJournal, per_event: float) -> None:
        self.inner = inner
        self.per_event = per_event

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def epoch(self) -> str:
        return self.inner.epoch

    async def __aenter__(self) -> SlowJournal:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.inner.__aexit__(*exc)

    async def append(self, events: Sequence[EncodedEvent]) -> list[StoredEvent]:
        await anyio.sleep(self.per_event * len(events))
        return await self.inner.append(events)


def main(settings: dict[str, Any]) -> None:
    journal: Any = SQLiteJournal(settings["db"])
    if settings.get("append_delay_per_event"):
        journal = SlowJournal(journal, settings["append_delay_per_event"])
    batcher = SSEEventBatcher(journal, **settings.get("batcher", {}))
    app = create_app(batcher, **settings.get("app", {}))
    run_server(
        app,
        "127.0.0.1",
        settings["port"],
        log_level="warning",
        send_timeout=settings.get("send_timeout", 30.0),
    )
    stats = batcher.stats()
    print(f"summary {json.dumps(stats.as_dict())}", flush=True)


class CustomServer(ServerProcess):
    """``ServerProcess`` running this module with ``settings`` (``port`` is added)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__([], env={"PYTHONPATH": str(ROOT)})
        self._args = [
            sys.executable,
            "-m",
            "tests.reliability.serve_custom",
            json.dumps({**settings, "port": self.port}),
        ]

    def summary(self) -> dict[str, Any]:
        """The batcher's final stats, printed after the drain."""
        for line in self.output().splitlines():
            if line.startswith("summary "):
                result: dict[str, Any] = json.loads(line.removeprefix("summary "))
                return result
        raise AssertionError(f"no summary in the output:\n{self.output()}")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
