"""Slow storage: every journal write takes 1.5 s more (network storage), POST stays fast.

``SlowJournal`` (a bench fixture) wraps a real SQLiteJournal and sleeps 1.5 s in
each ``append`` before delegating; concurrent appends sleep concurrently, which
is generous to the baseline. Two servers, each in its own process (uvicorn,
uvloop, httptools), the same client in both cases: 16 keep-alive connections each
POSTing one event per request for a fixed time (``bench.sse_client post``).

    batched   the service: ``create_app(SSEEventBatcher(SlowJournal(...)))``;
              POST answers once the event is queued, the writer appends in bulk
    baseline  synchronous write-per-request: the handler validates the event and
              awaits ``journal.append([event])`` before answering

Afterwards the batched server is stopped (SIGTERM drains the batcher) and the rows
in its database are counted: every accepted event must have been written.

``python -m bench.slow_storage --serve MODE --port P --db PATH`` runs one server.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

from . import Server, row, run_json, tmpdir

__all__ = ["SlowJournal", "measure", "run", "serve"]

LATENCY = 1.5
CONCURRENCY = 16
TARGET_P99_MS = 20.0
TARGET_RATIO = 10.0


class SlowJournal:
    """A SQLiteJournal whose every ``append`` first sleeps ``delay`` seconds."""

    def __init__(self, inner: Any, delay: float) -> None:
        self._inner = inner
        self._delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def epoch(self) -> str:
        return str(self._inner.epoch)

    async def __aenter__(self) -> SlowJournal:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._inner.__aexit__(*exc_info)

    async def append(self, events: Sequence[Any]) -> Any:
        import anyio

        await anyio.sleep(self._delay)
        return await self._inner.append(events)


def _baseline_app(journal: SlowJournal) -> Any:
    """Synchronous write per request: answer only after the (slow) write."""
    from contextlib import asynccontextmanager

    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from sse_batcher import EncodedEvent, Event

    async def ingest(request: Request) -> Response:
        entry = orjson.loads(await request.body())
        event = Event.create(entry["type"], entry.get("data"), source=entry["source"])
        data_json = orjson.dumps(event.data)
        stored = await journal.append([EncodedEvent(event, data_json)])
        return Response(orjson.dumps({"id": stored[0].id}), 201, media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        async with journal:
            yield

    return Starlette(
        routes=[Route("/events", ingest, methods=["POST"]), Route("/health", health)],
        lifespan=lifespan,
    )


def serve(mode: str, port: int, db: str, delay: float) -> None:
    """Run one server until SIGTERM (the batched one drains its batcher on the way out)."""
    import uvicorn

    from sse_batcher import SQLiteJournal, SSEEventBatcher, create_app

    journal = SlowJournal(SQLiteJournal(db), delay)
    if mode == "batched":
        # drain_timeout: the queue left at SIGTERM takes a few slow writes to empty.
        batcher = SSEEventBatcher(journal, drain_timeout=30.0)  # type: ignore[arg-type]
        app = create_app(batcher, uid_ttl=0)
    else:
        app = _baseline_app(journal)
    uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    ).run()


def measure(mode: str, directory: str, seconds: float, delay: float = LATENCY) -> dict[str, Any]:
    """One server (``batched`` or ``baseline``) under the POST load for ``seconds``."""
    db = os.path.join(directory, f"{mode}.db")
    argv = ["-m", "bench.slow_storage", "--serve", mode, "--port", "{port}", "--db", db]
    argv += ["--delay", str(delay)]
    with Server(argv, ready_path="/health" if mode == "baseline" else "/events/history") as server:
        result: dict[str, Any] = run_json(
            [
                "-m",
                "bench.sse_client",
                "post",
                "--port",
                str(server.port),
                "--concurrency",
                str(CONCURRENCY),
                "--duration",
                str(seconds),
            ],
            timeout=seconds + 60,
        )
        server.stop(timeout=60)
    with sqlite3.connect(db) as conn:
        # A batch row carries batch_count members; a single event is one.
        result["rows"], result["members"] = conn.execute(
            "SELECT count(*), coalesce(sum(coalesce(json_extract(data, '$.batch_count'), 1)), 0)"
            " FROM events"
        ).fetchone()
    return result


def run(quick: bool) -> list[dict[str, Any]]:
    seconds = 3.2 if quick else 6.2  # whole 1.5 s rounds for the baseline, plus slack
    with tmpdir("slow") as directory:
        base = measure("baseline", directory, seconds)
        ours = measure("batched", directory, seconds)
    label = f"slow storage (+{LATENCY:g} s per write), {CONCURRENCY} clients"
    accepted = ours["statuses"].get("202", 0)
    note = (
        f"{ours['requests']:,} requests, {accepted:,} accepted (202), "
        f"{ours['members']:,} events in {ours['rows']:,} rows in the journal after SIGTERM "
        "drained the batcher"
    )
    ok = ours["p99_ms"] <= TARGET_P99_MS
    rows = [
        row(label, "POST /events p50", ours["p50_ms"], "ms"),
        row(label, "POST /events p99", ours["p99_ms"], "ms", f"<= {TARGET_P99_MS:g}", ok),
        row(label, "baseline (write per request) p50", base["p50_ms"], "ms"),
    ]
    whole = ours["members"] == accepted and accepted == ours["requests"]
    rows.append(row(label, "batched throughput", ours["rate"], "req/s", "all written", whole, note))
    rows.append(row(label, "baseline throughput", base["rate"], "req/s"))
    ratio = ours["rate"] / base["rate"]
    rows.append(
        row(label, "batched / baseline", ratio, "x", f">= {TARGET_RATIO:g}x", ratio >= TARGET_RATIO)
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", choices=("batched", "baseline"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", default="")
    parser.add_argument("--delay", type=float, default=LATENCY)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.db, args.delay)
        return 0
    import json

    for r in run(args.quick):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
