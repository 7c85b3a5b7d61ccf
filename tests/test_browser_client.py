"""sse-batcher.js in headless Chromium.

The protocol edge cases (a replayed overlap, a CRLF split across chunks, a batch
without ``member_type``, ``reset``, 503 then a refusal) run against a small scripted
SSE app in this file, so each byte the client sees is chosen. The end-to-end cases
(batches and singles from the real server, a server restart mid-stream) run against
``python -m sse_batcher serve``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tests.browser import chromium, collect_page_errors
from tests.conftest import free_port
from tests.servers import ServerProcess

pytestmark = pytest.mark.browser

STATIC = Path(__file__).parent.parent / "sse_batcher" / "static"
HARNESS_PATH = "/__harness__"

# Installs a subscription in the page; everything it sees lands in window.got.
# Member handlers record data.seq, so "exactly once and in order" is checkable.
HARNESS_JS = """
async ({url, memberTypes, options}) => {
  const m = await import("/static/sse-batcher.js");
  const got = {members: [], batches: [], any: [], statuses: [], resets: [], errors: []};
  window.got = got;
  const sub = m.subscribe(url, {
    ...options,
    onStatus: (status, detail) => got.statuses.push(
      detail && detail.error ? `${status}:${detail.error.status ?? "error"}` : status),
    onReset: (info) => got.resets.push(info),
  });
  window.sub = sub;
  window.addEventListener("error", (e) => got.errors.push(String(e.error ?? e.message)));
  sub.onAny((env, info) => got.any.push({id: env.id, type: env.type, ...info}));
  for (const type of memberTypes) {
    sub.on(type, (data, meta) => got.members.push({
      type, seq: data.seq, id: meta.id, batch: meta.batch && meta.batch.count,
      ts: meta.ts, uid: meta.uid ?? null}));
    sub.onBatch(type, (items, meta) => got.batches.push({type, count: meta.count, id: meta.id}));
  }
}
"""


@contextmanager
def open_harness(base_url: str) -> Iterator[Any]:
    """A blank same-origin page at ``base_url`` (served by playwright, not the app)."""
    with chromium() as browser:
        page = browser.new_page()
        page.route(
            base_url + HARNESS_PATH,
            lambda route: route.fulfill(
                status=200, content_type="text/html", body="<!doctype html><title>t</title>"
            ),
        )
        page.goto(base_url + HARNESS_PATH)
        yield page


def install(page: Any, url: str, member_types: list[str], **options: Any) -> None:
    page.evaluate(HARNESS_JS, {"url": url, "memberTypes": member_types, "options": options})


# --------------------------------------------------------------------------- scripted app


def envelope(event_id: str | None, type_: str, data: dict[str, Any], source: str = "w1") -> str:
    body = json.dumps({"id": event_id, "type": type_, "source": source, "ts": 1.0, "data": data})
    id_line = "" if event_id is None else f"id: {event_id}\n"
    return f"{id_line}event: {type_}\ndata: {body}\n\n"


def batch(event_id: str, type_: str, seqs: list[int], member_type: str | None) -> str:
    data: dict[str, Any] = {
        "batch_count": len(seqs),
        "first_ts": 1.0,
        "last_ts": 1.2,
        "items": [{"job_id": f"j{s}", "seq": s} for s in seqs],
        "job_ids": [f"j{s}" for s in seqs],
    }
    if member_type is not None:
        data["member_type"] = member_type
    return envelope(event_id, type_, data)


def single(event_id: str | None, seq: int, type_: str = "JOB_STARTED") -> str:
    return envelope(event_id, type_, {"job_id": f"j{seq}", "seq": seq})


def _split(text: str, cuts: list[int]) -> list[str]:
    parts, start = [], 0
    for cut in cuts:
        parts.append(text[start:cut])
        start = cut
    parts.append(text[start:])
    return parts


# what the hub sends when a cursor cannot be served (continue: live)
RESET = {"reason": "trimmed", "last_event_id": "e.4", "oldest_id": "f.9", "continue": "live"}

# One entry per connection: the chunks to send, or an HTTP status to answer with.
SCRIPT: list[list[str] | int] = [
    [
        "retry: 40\n\n",
        single("e.1", 1),
        batch("e.2", "JOBS_BATCH_STARTED", [2, 3, 4], "JOB_STARTED"),
        # the same message split inside its CRLF line endings and mid-field
        *_split(single("e.3", 5).replace("\n", "\r\n"), [9, 10, 31]),
        ": heartbeat\n\n",
        single(None, 0, "JOB_PROGRESS"),  # stream-only: no id, no cursor change
    ],
    [
        single("e.3", 5),  # overlap around the reconnect: must not be delivered again
        batch("e.4", "JOBS_BATCH_STARTED", [6, 7], None),  # no member_type: by convention
        "event: reset\ndata: " + json.dumps(RESET) + "\n\n",
    ],
    503,
    [single("f.11", 8), batch("f.12", "JOBS_BATCH_STARTED", [9, 10, 11, 12], "JOB_STARTED")],
    401,
]


def scripted_app(requests: list[str | None]) -> Starlette:
    async def events(request: Request) -> Response:
        requests.append(request.query_params.get("last_event_id"))
        step = SCRIPT[len(requests) - 1] if len(requests) <= len(SCRIPT) else 401
        if isinstance(step, int):
            headers = {"Retry-After": "0"} if step == 503 else {}
            return PlainTextResponse("no", status_code=step, headers=headers)

        async def body(chunks: list[str] = step) -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk.encode()

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/events", events),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )


@contextmanager
def serve_in_thread(app: Starlette) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "scripted app did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(page: Any, condition: str, timeout_ms: int = 15_000) -> None:
    page.wait_for_function(condition, timeout=timeout_ms)


def test_scripted_protocol_cases_deliver_each_member_once() -> None:
    requests: list[str | None] = []
    with serve_in_thread(scripted_app(requests)) as base, open_harness(base) as page:
        install(page, "/events", ["JOB_STARTED"], minDelay=40, maxDelay=200)
        wait_for(page, "window.got.statuses.at(-1)?.startsWith('closed')")
        got = page.evaluate("window.got")
        last_id = page.evaluate("window.sub.lastEventId")

    seqs = [m["seq"] for m in got["members"]]
    assert seqs == list(range(1, 13)), got["members"]
    # each connection resumed from the last durable id; a reset keeps the cursor until
    # the next durable id (a reconnect in between is reset again: reported, not silent)
    assert requests == [None, "e.3", "e.4", "e.4", "f.12"]
    assert last_id == "f.12"
    assert got["resets"] == [RESET]
    assert [(b["count"], b["id"]) for b in got["batches"]] == [
        (1, "e.1"),
        (3, "e.2"),
        (1, "e.3"),
        (2, "e.4"),
        (1, "f.11"),
        (4, "f.12"),
    ]
    # the stream-only event reached onAny (no id), and no JOB_STARTED handler
    assert {"id": None, "type": "JOB_PROGRESS", "batched": False} in [
        {k: a[k] for k in ("id", "type", "batched")} for a in got["any"]
    ]
    assert got["statuses"][:2] == ["connecting", "open"]
    assert got["statuses"][-1] == "closed:401"
    assert got["statuses"].count("open") == 3
    assert got["errors"] == []


def test_throwing_handler_does_not_stop_the_others_and_close_stops() -> None:
    requests: list[str | None] = []
    with serve_in_thread(scripted_app(requests)) as base, open_harness(base) as page:
        errors = collect_page_errors(page)
        page.evaluate(
            """async () => {
              const m = await import("/static/sse-batcher.js");
              window.seen = [];
              window.statuses = [];
              const sub = m.subscribe("/events", {onStatus: (s) => window.statuses.push(s)});
              sub.on("JOB_STARTED", () => { throw new Error("boom"); });
              sub.on("JOB_STARTED", (d) => {
                window.seen.push(d.seq);
                if (d.seq === 4) sub.close();
              });
            }"""
        )
        wait_for(page, "window.statuses.at(-1) === 'closed'")
        seen = page.evaluate("window.seen")
        statuses = page.evaluate("window.statuses")
    assert seen == [1, 2, 3, 4]  # close() inside a handler stops delivery at once
    assert statuses == ["connecting", "open", "closed"]
    assert requests == [None]
    assert sum("boom" in e for e in errors) == 4, errors


def test_batch_type_convention_matches_the_server() -> None:
    from sse_batcher import batch_type_for

    names = [
        *["JOB_STARTED", "THUMBNAIL_GENERATED", "PING", "STATUS_CHANGED", "X_", "_X", "A_B_C"],
        *["BOX_MOVED", "ENTRY_ADDED", "CITY_RENAMED", "JOB_DONE", "JOBS_DONE", "CACHE_CLEARED"],
        *["CLASS_ADDED", "KEY_ROTATED", "job_started", "entry_added", "Job_Started", "ping"],
    ]
    with serve_in_thread(scripted_app([])) as base, open_harness(base) as page:
        js = page.evaluate(
            """async (names) => {
              const m = await import("/static/sse-batcher.js");
              return names.map((n) => {
                const type = m.batchTypeFor(n);
                // read backwards, as for a batch without member_type
                const back = m.unpack({type, data: {items: [], batch_count: 2}}).memberType;
                return [type, back];
              });
            }""",
            names,
        )
    assert [type for type, _ in js] == [batch_type_for(n) for n in names]
    # the convention reads back to the member type wherever the name is not ambiguous
    assert [back for _, back in js] == names


# --------------------------------------------------------------------------- real server


def post(base_url: str, source: str, type_: str, seqs: range) -> None:
    events = [
        {
            "type": type_,
            "source": source,
            "data": {"job_id": f"j{s}", "seq": s},
            "ts": 1_700_000_000 + s,
            "uid": f"{source}-{type_}-{s}",
        }
        for s in seqs
    ]
    response = httpx.post(f"{base_url}/events", json=events, timeout=10)
    response.raise_for_status()
    assert response.json()["accepted"] == len(events), response.text


def wait_for_members(page: Any, count: int) -> None:
    wait_for(page, f"window.got.members.length >= {count}")


def restarted(first: ServerProcess, args: list[str]) -> ServerProcess:
    """A new server process on ``first``'s port, so the page's URL stays valid."""
    second = ServerProcess([*args, "--port", str(first.port)])  # the last --port wins
    second.port, second.url = first.port, first.url
    return second


def test_real_server_members_of_batches_and_singles_arrive_once_in_order(tmp_path: Path) -> None:
    with ServerProcess(["--db", str(tmp_path / "e.db"), "--durable-ingest"]) as server:
        with open_harness(server.url) as page:
            install(page, "/events", ["JOB_STARTED", "JOB_COMPLETED"])
            wait_for(page, "window.got.statuses.includes('open')")
            post(server.url, "w1", "JOB_STARTED", range(1, 13))  # 10 + 2: max_batch is 10
            wait_for_members(page, 12)
            post(server.url, "w2", "JOB_STARTED", range(13, 14))  # alone: a single event
            wait_for_members(page, 13)
            post(server.url, "w1", "JOB_COMPLETED", range(14, 19))
            wait_for_members(page, 18)
            patched = httpx.patch(f"{server.url}/workers/w3", json={"batching": False})
            assert patched.status_code == 200, patched.text
            post(server.url, "w3", "JOB_STARTED", range(19, 22))  # batching off: 3 singles
            wait_for_members(page, 21)
            got = page.evaluate("window.got")

    assert [m["seq"] for m in got["members"]] == list(range(1, 22))
    # each member keeps its own ts and uid, batched or not (issue 15)
    assert [m["ts"] for m in got["members"]] == [1_700_000_000 + s for s in range(1, 22)]
    # (a single event's envelope carries no uid: only a batch's items need one)
    batched = [m for m in got["members"] if m["batch"]]
    assert batched and all(m["uid"].endswith(f"-{m['seq']}") for m in batched), batched
    assert [(b["type"], b["count"]) for b in got["batches"]] == [
        ("JOB_STARTED", 10),
        ("JOB_STARTED", 2),
        ("JOB_STARTED", 1),
        ("JOB_COMPLETED", 5),
        ("JOB_STARTED", 1),
        ("JOB_STARTED", 1),
        ("JOB_STARTED", 1),
    ]
    assert [a["type"] for a in got["any"]][:4] == [
        "JOBS_BATCH_STARTED",
        "JOBS_BATCH_STARTED",
        "JOB_STARTED",
        "JOBS_BATCH_COMPLETED",
    ]
    ids = [a["id"] for a in got["any"]]
    assert len(set(ids)) == len(ids) and None not in ids
    assert got["errors"] == []


def test_channels_and_a_jwt_sent_as_a_header(tmp_path: Path) -> None:
    import jwt

    secret = "browser-test-secret-of-32-bytes-or-more"

    def token(grant: dict[str, Any]) -> str:
        return jwt.encode({"exp": int(time.time()) + 300, "sse_batcher": grant}, secret)

    reader = token({"subscribe": ["user.1.*", "user.2.*"]})
    writer = token({"publish": ["*"]})
    args = ["--db", str(tmp_path / "e.db"), "--durable-ingest", "--jwt-secret", secret]
    with ServerProcess(args) as server, open_harness(server.url) as page:
        requests: list[Any] = []
        page.on("request", lambda r: requests.append(r) if "/events" in r.url else None)
        install(page, "/events", ["JOB_STARTED"], channels=["user.1.*"], token=reader)
        wait_for(page, "window.got.statuses.includes('open')")
        entries = [
            {"type": "JOB_STARTED", "source": "w", "channel": c, "data": {"seq": n}}
            for n, c in enumerate(["user.2.jobs", "user.1.jobs", "user.3.jobs"], 1)
        ]
        answer = httpx.post(
            f"{server.url}/events", json=entries, headers={"Authorization": f"Bearer {writer}"}
        )
        assert answer.status_code == 202, answer.text
        wait_for_members(page, 1)
        got = page.evaluate("window.got")
        # a pattern the token does not cover: refused before the stream, closed for good
        install(page, "/events", ["JOB_STARTED"], channels=["user.3.*"], token=reader)
        wait_for(page, "window.got.statuses.at(-1) === 'closed:403'")
    assert [m["seq"] for m in got["members"]] == [2]
    first = requests[0]
    assert "channel=user.1.*" in first.url.replace("%2A", "*") and "token=" not in first.url
    assert first.headers["authorization"] == f"Bearer {reader}"


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_real_server_restart_mid_stream_loses_and_repeats_nothing(tmp_path: Path, how: str) -> None:
    args = ["--db", str(tmp_path / "e.db"), "--durable-ingest"]
    # While `offline` is set, the page's connection attempts fail as if the network
    # were down, so the test decides when the page gets back (and what it missed).
    offline = False

    def gate(route: Any) -> None:
        if offline:
            route.abort("connectionrefused")
        else:
            route.continue_()

    first = ServerProcess(args)
    with first, open_harness(first.url) as page:
        page.route(re.compile(r"/events(\?.*)?$"), gate)
        install(page, "/events", ["JOB_STARTED"], minDelay=150, maxDelay=600)
        wait_for(page, "window.got.statuses.includes('open')")
        post(first.url, "w1", "JOB_STARTED", range(1, 8))
        wait_for_members(page, 7)
        # committed (durable ingest) but maybe not yet delivered when the server goes
        post(first.url, "w1", "JOB_STARTED", range(8, 16))
        post(first.url, "w2", "JOB_STARTED", range(16, 17))
        offline = True
        if how == "sigkill":
            first.kill()
        else:
            first.stop()
        with restarted(first, args) as second:
            post(second.url, "w1", "JOB_STARTED", range(17, 30))  # only a replay has these
            wait_for(
                page, "window.got.statuses.filter((s) => s.startsWith('reconnecting')).length >= 2"
            )
            offline = False
            wait_for(page, "window.got.statuses.filter((s) => s === 'open').length >= 2")
            post(second.url, "w3", "JOB_STARTED", range(30, 31))  # live again
            wait_for_members(page, 30)
            got = page.evaluate("window.got")
            cursor = page.evaluate("window.sub.lastEventId")
            newest = httpx.get(f"{second.url}/events/history?after={cursor}").json()

    assert [m["seq"] for m in got["members"]] == list(range(1, 31))
    assert newest["events"] == []  # the page's cursor is the newest id
    assert got["resets"] == []
    assert got["errors"] == []
