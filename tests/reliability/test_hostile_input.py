"""Hostile input: fuzz POST /events and the query strings of GET /events and history.

Never a 500, never a stall (every request under a deadline), every rejection has a
reason, accepted data is stored byte-for-byte (as the server's JSON parse of what was
sent: compared through /events/history), and a real stream carrying it parses back,
with the spec-faithful parser, to exactly the same events (no field injection).

The fuzz runs in-process (httpx.ASGITransport) on an app kept open in a blocking
portal so hypothesis can drive it example by example; the stream pass and the
GET /events query fuzz run over real uvicorn.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import anyio
import httpx
import orjson
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sse_batcher import SQLiteJournal, SSEEventBatcher, create_app

from ..servers import app_client, serve_app
from .helpers import RawSSEClient

T = TypeVar("T")
DEADLINE = 10.0  # seconds any single request may take: beyond it, the server stalled
FORBIDDEN_IN_NAMES = "\r\n\x00:"
ACCEPTED_CORPUS: list[dict[str, Any]] = []  # accepted entries, replayed over a real stream

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
NASTY_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\r",
        "\n",
        "\r\n",
        "\x00",
        "a\x00b",
        "\n\ndata: injected\n\n",
        "\rid: 999\r",
        "event: x",
        ": comment",
        "'; DROP TABLE events; --",
        '" OR 1=1 --',
        "%s%s%n",
        "\u2028\u2029\u0085",
        "\ufeff",
        "\U0001f600",
        "ùñíçødé",
        "\\",
        "\\u0000",
        "</script>",
        "x" * 300,
        "retry: 1",
        "id",
        "data:",
        "\t",
        "\x7f\x1b[2J",
    ]
)
TEXT = st.one_of(NASTY_TEXT, st.text(max_size=40))
JSON = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=20,
)
NAME = st.one_of(
    st.sampled_from(["JOB_STARTED", "job.done", "Ünïcode", "a b", "x;y", "1", "-", "DROP"]),
    TEXT,
    st.integers(),
    st.none(),
)
ENTRY = st.fixed_dictionaries(
    {"type": NAME, "source": NAME},
    optional={
        "data": st.one_of(st.dictionaries(TEXT, JSON, max_size=5), JSON),
        "ts": st.one_of(st.floats(allow_nan=False, allow_infinity=False), INT64, TEXT, st.none()),
        "uid": st.one_of(TEXT, st.integers()),
        "extra": JSON,
    },
)
BODY = st.one_of(
    ENTRY,
    st.lists(ENTRY, max_size=6),
    st.builds(lambda e: {"events": e}, st.lists(ENTRY, max_size=6)),
    JSON,
)


class Service:
    """An app on a real SQLite journal, open in a portal thread, with a client."""

    def __init__(self, portal: BlockingPortal, app: Any, client: httpx.AsyncClient) -> None:
        self.portal = portal
        self.app = app
        self.client = client

    def run(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async def bounded() -> T:
            with anyio.fail_after(DEADLINE):
                return await func(*args, **kwargs)

        return self.portal.call(bounded)

    def post(self, content: bytes) -> httpx.Response:
        return self.run(
            self.client.post,
            "/events",
            content=content,
            headers={"content-type": "application/json"},
        )

    def newest(self) -> str | None:
        return self.run(self.app.state.journal.newest_id)

    def history_after(self, cursor: str | None) -> list[dict[str, Any]]:
        self.run(self.app.state.batcher.flush)
        params = {"limit": "1000"} | ({} if cursor is None else {"after": cursor})
        response = self.run(self.client.get, "/events/history", params=params)
        assert response.status_code == 200, response.text
        return list(response.json()["events"])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    # max_batch=1: every accepted entry is stored as its own row, unchanged.
    app = create_app(SSEEventBatcher(SQLiteJournal(db), window=0.01, max_batch=1))
    with start_blocking_portal("asyncio") as portal:
        with portal.wrap_async_context_manager(app_client(app)) as client:
            yield Service(portal, app, client)


def entries_of(body: Any) -> list[Any] | None:
    """The entries the server should see, or None when the shape itself is invalid."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict) and "events" in body:
        return (
            body["events"] if set(body) == {"events"} and isinstance(body["events"], list) else None
        )
    if isinstance(body, dict):
        return [body]
    return None


def check_post(service: Service, body: Any, content: bytes) -> None:
    cursor = service.newest()
    response = service.post(content)
    assert response.status_code in (202, 400, 413), (response.status_code, response.text)
    if response.status_code != 202:
        assert isinstance(response.json()["error"], str) and response.json()["error"]
        assert service.newest() == cursor
        return
    answer = response.json()
    entries = entries_of(body)
    assert entries is not None, "an invalid shape was accepted"
    rejected = {r["index"]: r["error"] for r in answer["rejected"]}
    assert all(isinstance(e, str) and e for e in rejected.values()), "a rejection without reason"
    accepted = [e for i, e in enumerate(entries) if i not in rejected]
    assert answer["accepted"] + answer["duplicates"] == len(accepted)
    stored = service.history_after(cursor)
    if answer["duplicates"]:
        # A generated uid repeated an earlier example's: acknowledged, stored once.
        assert len(stored) == answer["accepted"]
        return
    assert len(stored) == len(accepted)
    for entry, row in zip(accepted, stored, strict=True):
        for name in ("type", "source"):
            assert isinstance(entry[name], str) and entry[name]
            assert not any(c in entry[name] for c in FORBIDDEN_IN_NAMES), entry[name]
        assert (row["type"], row["source"]) == (entry["type"], entry["source"])
        data = entry.get("data") or {}
        # Byte-for-byte: the stored bytes are the canonical encoding of what was sent.
        assert orjson.dumps(row["data"]) == orjson.dumps(data)
        assert row["data"] == data
        if isinstance(entry.get("ts"), int | float) and not isinstance(entry["ts"], bool):
            assert math.isclose(row["ts"], float(entry["ts"]), rel_tol=0, abs_tol=0)
        if len(ACCEPTED_CORPUS) < 400:
            ACCEPTED_CORPUS.append({"type": row["type"], "source": row["source"], "data": data})


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODY)
def test_fuzz_post_events(service: Service, body: Any) -> None:
    try:
        content = orjson.dumps(body)
    except orjson.JSONEncodeError:
        return  # e.g. a lone surrogate in a generated str: the raw-bytes test covers those
    check_post(service, body, content)


RAW_BODIES = [
    b'{"type":"A\xff","source":"s"}',  # invalid UTF-8
    b'{"type":"A","source":"s","data":{"x":"\xed\xa0\x80"}}',  # UTF-8-encoded surrogate
    b'{"type":"A","source":"s","data":{"x":"\\ud800"}}',  # lone surrogate escape
    b'{"type":"A","source":"s","data":{"x":"\\udc00\\ud800"}}',
    b'{"type":"A","source":"s","data":{"n":1e999}}',  # overflows a double
    b'{"type":"A","source":"s","data":{"n":-1e400}}',
    b'{"type":"A","source":"s","data":{"n":NaN}}',
    b'{"type":"A","source":"s","data":{"n":01}}',
    b'{"type":"A","source":"s"',  # truncated
    b"\x00\x00\x00",
    b"",
    b"[" * 5000 + b"]" * 5000,  # deeper than the parser allows
    b'{"type":"A","source":"s","data":{"d":' + b"[" * 300 + b"]" * 300 + b"}}",  # too deep to store
    b'{"type":"A","source":"s","data":{"d":' + b"[" * 200 + b"]" * 200 + b"}}",
    b'{"type":"A\\r\\nid: 1","source":"s"}',
    b'{"type":"A","source":"s\\u0000"}',
    b'{"type":"A","source":"s","data":{"k":"v"},"data":{"k":"w"}}',  # duplicate key
    b'{"events":[{"type":"A","source":"s"}],"more":1}',
    b'"just a string"',
    b"123456789012345678901234567890",
    b'{"type":"A","source":"s","ts":1e308}',
    b'{"type":"A","source":"s","ts":true}',
]


@pytest.mark.parametrize("content", RAW_BODIES, ids=range(len(RAW_BODIES)))
def test_adversarial_raw_bodies(service: Service, content: bytes) -> None:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        response = service.post(content)
        assert response.status_code == 400, response.text
        assert response.json()["error"]
        return
    check_post(service, body, content)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
@example(b'{"type":"A","source":"s","data":{"x":"\xc3\x28"}}')
def test_fuzz_post_random_bytes(service: Service, content: bytes) -> None:
    response = service.post(content)
    assert response.status_code in (202, 400), response.text


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30])
def test_integers_beyond_64_bits(service: Service, number: int) -> None:
    """Such integers are read as doubles (as JavaScript reads them); stored consistently."""
    content = b'{"type":"BIG","source":"s","data":{"n":%d}}' % number
    cursor = service.newest()
    response = service.post(content)
    assert response.status_code in (202, 400), response.text
    if response.status_code == 202 and response.json()["accepted"]:
        [row] = service.history_after(cursor)
        assert row["data"]["n"] == float(number)


@pytest.mark.anyio
async def test_ten_megabyte_strings(tmp_path: Path) -> None:
    huge = "x" * (10 * 2**20)
    body = orjson.dumps({"type": "A", "source": "s", "data": {"s": huge}})
    small = create_app(SSEEventBatcher(SQLiteJournal(tmp_path / "a.db")))
    async with app_client(small) as client:
        with anyio.fail_after(DEADLINE):
            response = await client.post("/events", content=body)
        assert response.status_code == 413 and response.json()["error"]
    big = create_app(SSEEventBatcher(SQLiteJournal(tmp_path / "b.db")), max_body_bytes=64 * 2**20)
    async with app_client(big) as client:
        with anyio.fail_after(DEADLINE):
            response = await client.post("/events", content=body)
            assert response.status_code == 202, response.text
            [rejected] = response.json()["rejected"]
            assert "limit" in rejected["error"]
            names = orjson.dumps({"type": huge, "source": "s"})
            response = await client.post("/events", content=names)
            assert response.status_code == 202 and response.json()["rejected"][0]["error"]
            assert (await big.state.journal.newest_id()) is None


QUERY_VALUE = st.one_of(
    NASTY_TEXT,
    st.text(max_size=30),
    st.sampled_from(
        [
            "0",
            "-1",
            "1.5",
            "9" * 5000,
            "abc.1",
            "x.y.z",
            " 5 ",
            "1_000",
            "\u0661",
            "0x10",
            "1e3",
            "NaN",
            "18446744073709551616",
            "deadbeef.99999999999999999999",
        ]
    ),
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["after", "limit", "token", "x"]), QUERY_VALUE, max_size=3))
def test_fuzz_history_query(service: Service, params: dict[str, str]) -> None:
    response = service.run(service.client.get, "/events/history", params=params)
    assert response.status_code in (200, 400), (params, response.status_code, response.text)
    body = response.json()
    if response.status_code == 400:
        assert body["error"]
    else:
        assert isinstance(body["events"], list)


# -- over real uvicorn ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BlockingPortal, str, Any]]:
    db = tmp_path_factory.mktemp("stream") / "stream.db"
    app = create_app(SSEEventBatcher(SQLiteJournal(db), window=0.01, max_batch=1), heartbeat=60)
    with start_blocking_portal("asyncio") as portal:
        with portal.wrap_async_context_manager(serve_app(app)) as url:
            yield portal, url, app


async def open_stream(url: str, path: str, headers: dict[str, str] | None = None) -> RawSSEClient:
    client = RawSSEClient(url, path, headers)
    await client.connect()
    return client


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["last_event_id", "types", "sources", "on_reset", "token"]),
        QUERY_VALUE,
        max_size=3,
    ),
    st.one_of(
        st.none(), st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=40)
    ),
)
def test_fuzz_stream_query_and_last_event_id(
    served: tuple[BlockingPortal, str, Any], params: dict[str, str], header: str | None
) -> None:
    portal, url, _ = served
    headers = {} if header is None else {"Last-Event-ID": header.strip() or "x"}

    async def go() -> None:
        with anyio.fail_after(DEADLINE):
            client = await open_stream(url, "/events?" + urlencode(params), headers)
            try:
                status = await client.read_head()
                assert status in (200, 400), status
                if status == 200:
                    # The stream starts (retry line) and any reset is well-formed.
                    await client.read_until(lambda c: c.parser.retry is not None, DEADLINE)
                    for message in client.messages:
                        assert message.type == "reset"
                        assert isinstance(orjson.loads(message.data), dict)
            finally:
                client.close()

    portal.call(go)


def test_stream_carries_hostile_data_without_injection(
    served: tuple[BlockingPortal, str, Any],
) -> None:
    """Everything accepted (the fixed corpus plus what the fuzz accepted) goes through a
    real stream and parses back to exactly the stored events, in order."""
    portal, url, app = served
    corpus = [
        {"type": t, "source": "s\u2028", "data": {"text": v, "v": [v, {v: v}]}}
        for t in ("A B", "ÄÖ", "x;DROP TABLE events", " lead", "trail ", "\ufeffBOM", "id", "data")
        for v in ("\r", "\n", "\r\n", "\n\ndata: injected\n\nid: 0\n", "\x00", "\u2028", ":x", "")
    ] + ACCEPTED_CORPUS

    async def go() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=DEADLINE) as client:
            cursor = await app.state.journal.newest_id()
            stream = await open_stream(url, "/events", {"Last-Event-ID": cursor or "0"})
            try:
                assert await stream.read_head() == 200
                for i in range(0, len(corpus), 50):
                    response = await client.post("/events", json=corpus[i : i + 50])
                    assert response.status_code == 202 and response.json()["rejected"] == []
                await app.state.batcher.flush()
                page = (
                    await client.get(
                        "/events/history", params={"after": cursor or "0", "limit": 1000}
                    )
                ).json()["events"]
                assert len(page) == len(corpus)
                await stream.read_until(lambda c: len(c.messages) >= len(corpus), DEADLINE)
            finally:
                stream.close()
        assert len(stream.messages) == len(corpus)
        assert len(ACCEPTED_CORPUS) == 0 or len(ACCEPTED_CORPUS) > 20, "the fuzz accepted little"
        for message, row, sent in zip(stream.messages, page, corpus, strict=True):
            assert message.type == sent["type"] == row["type"]
            assert message.last_event_id == row["id"]
            envelope = orjson.loads(message.data)
            assert envelope == row
            assert orjson.dumps(envelope["data"]) == orjson.dumps(sent["data"])

    portal.call(go)
