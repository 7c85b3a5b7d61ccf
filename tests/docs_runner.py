"""Run one Python block of the docs in a fresh temporary directory, as a reader would.

    .venv/bin/python -m tests.docs_runner docs/workers.md:21

(the line of the block's first code line, as ``tests/test_docs.py`` names it; give
only the file to list its blocks). The
block's marker picks the setup (see ``tests/docs_blocks.py``):

- ``none``: the block runs as a script; top-level ``await``/``async with`` run in an
  event loop. It must import what it uses.
- ``batcher``: the block runs inside ``async with SQLiteJournal("events.db") as
  journal, SSEEventBatcher(journal) as batcher``, with ``BaseWorker`` and
  ``render_step`` standing for the reader's own worker class; afterwards the
  threads it started are joined, the batcher is flushed and every stored event is
  printed as ``stored: TYPE SOURCE DATA``.
- ``server``: a real ``sse-batcher serve --durable-ingest --token s3cret`` runs, and the block's
  ``http://events.internal:8000`` / ``http://127.0.0.1:8000`` point at it;
  afterwards every stored event is printed the same way, from ``/events/history``.

Every run then prints the files the block left behind (``file: PATH``), and fails
unless each ``expect`` text appears in what was printed.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import io
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import Any

import anyio
import httpx
import orjson

from sse_batcher import SQLiteJournal, SSEEventBatcher

from .docs_blocks import ROOT, Block, blocks
from .servers import ServerProcess

DOC_URLS = ("http://events.internal:8000", "http://127.0.0.1:8000")
THREAD_JOIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class Job:
    """What the docs' ``BaseWorker`` hands to ``process``."""

    id: int
    camera_id: int


class BaseWorker:
    """Stands for the reader's existing worker class in docs/workers.md."""

    def __init__(self, poll_interval: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.poll_interval = poll_interval

    def run_forever(self) -> None:
        # "Forever" is three jobs here, so the thread the example starts ends.
        for job in (Job(123, 7), Job(124, 7), Job(125, 9)):
            self.process(job)  # type: ignore[attr-defined]


def render_step(job: Job) -> None:
    """The docs' stand-in for real work."""


def _print_stored(events: list[tuple[str, str, object]]) -> None:
    for type_, source, data in events:
        print("stored:", type_, source, orjson.dumps(data).decode())


def _compile(block: Block) -> CodeType:
    # Top-level await allowed, as in the asyncio REPL: examples read like a script body.
    return compile(block.padded(), str(block.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


async def _run_code(block: Block, namespace: dict[str, Any]) -> None:
    result = eval(_compile(block), namespace)
    if result is not None:  # top-level await made it a coroutine
        await result


def _namespace() -> dict[str, Any]:
    return {"__name__": "__main__", "__builtins__": __builtins__}


async def _with_batcher(block: Block) -> None:
    async with SQLiteJournal("events.db") as journal, SSEEventBatcher(journal) as batcher:
        namespace = _namespace() | {
            "journal": journal,
            "batcher": batcher,
            "BaseWorker": BaseWorker,
            "render_step": render_step,
        }
        before = set(threading.enumerate())
        await _run_code(block, namespace)
        # The example's own threads; aiosqlite's and anyio's workers are daemons.
        started = [t for t in threading.enumerate() if t not in before and not t.daemon]
        for thread in started:
            await anyio.to_thread.run_sync(thread.join, THREAD_JOIN_TIMEOUT)
            if thread.is_alive():
                raise TimeoutError(f"the thread {thread.name} the example started never ended")
        await batcher.flush()
        stored = await journal.read_after(None, limit=10_000)
        _print_stored([(s.event.type, s.event.source, s.event.data) for s in stored])


DOC_TOKEN = "s3cret"  # the token the README and docs/ examples use


async def _with_server(block: Block) -> None:
    # --durable-ingest: a publisher's flush returns once its events are stored, so the
    # history read below sees them without waiting for a window.
    # --token: the docs' token, so an example that forgets it stores nothing and fails
    # its expect (issue 15: the AsyncRemotePublisher example once did, silently).
    args = ["--db", "server.db", "--window-ms", "50", "--durable-ingest", "--token", DOC_TOKEN]
    async with ServerProcess(args) as server:
        code = block.code
        for url in DOC_URLS:
            code = code.replace(url, server.url)
        await _run_code(dataclasses.replace(block, code=code), _namespace())
        headers = {"Authorization": f"Bearer {DOC_TOKEN}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
            page = (await client.get("/events/history", params={"limit": 1000})).json()
        _print_stored([(e["type"], e["source"], e["data"]) for e in page["events"]])


def run(block: Block) -> str:
    """Run ``block`` in the current directory; return what it printed (also echoed)."""
    if block.marker.skip is not None:
        _compile(block)
        return ""
    out = io.StringIO()
    with _tee(out):
        if block.marker.setup == "batcher":
            anyio.run(_with_batcher, block)
        elif block.marker.setup == "server":
            anyio.run(_with_server, block)
        else:
            code = _compile(block)
            if code.co_flags & inspect.CO_COROUTINE:  # the block awaits at top level
                anyio.run(_run_code, block, _namespace())
            else:
                exec(code, _namespace())
        for path in sorted(Path.cwd().rglob("*")):
            if path.is_file():
                print("file:", path.relative_to(Path.cwd()))
    return out.getvalue()


@contextlib.contextmanager
def _tee(out: io.StringIO) -> Iterator[None]:
    """Print to the real stdout and keep a copy for the ``expect`` checks."""
    real = sys.stdout

    class Tee(io.TextIOBase):
        def write(self, text: str) -> int:
            real.write(text)
            return out.write(text)

        def flush(self) -> None:
            real.flush()

    sys.stdout = Tee()
    try:
        yield
    finally:
        sys.stdout = real


def find(spec: str) -> Block:
    """The block at ``FILE:LINE`` (the line of its first code line)."""
    name, _, line = spec.rpartition(":")
    path = (ROOT / name).resolve()
    for block in blocks(path):
        if block.line == int(line):
            return block
    raise SystemExit(f"no code block starts at {spec}")


def main(argv: list[str]) -> int:
    (spec,) = argv
    if not spec.rpartition(":")[2].isdigit():  # a file: list its Python blocks
        for found in blocks((ROOT / spec).resolve()):
            if found.lang == "python":
                print(found.where, found.marker)
        return 0
    block = find(spec)
    with tempfile.TemporaryDirectory(prefix="docs-example-") as tmp:
        os.chdir(tmp)
        os.environ["HOME"] = tmp  # publishers' default spool lives under ~/.cache
        printed = run(block)
        sys.stdout.flush()
    missing = [text for text in block.marker.expect if text not in printed]
    if missing:
        print(f"{block.where}: the example did not print {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
