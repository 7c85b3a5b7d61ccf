"""Auth: missing and wrong tokens, roles (a subscribe token never publishes), and
constant-time comparison (the implementation uses hmac.compare_digest; a rough timing
test with generous bounds checks a near-miss token takes no longer than a far miss)."""

from __future__ import annotations

import hmac
import inspect
import re
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from sse_batcher import SQLiteJournal, SSEEventBatcher, create_app
from sse_batcher.service import _auth
from sse_batcher.service._auth import AuthGate, StaticTokens

from ..servers import app_client, serve_app
from .helpers import RawSSEClient

pytestmark = pytest.mark.anyio

PUB = "publish-secret-0123456789"
SUB = "subscribe-secret-9876543210"
EVENT = {"type": "JOB_STARTED", "source": "w", "data": {"job_id": 1}}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        SSEEventBatcher(SQLiteJournal(tmp_path / "a.db")), token=PUB, subscribe_token=SUB
    )
    async with app_client(app) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("headers", "query", "status"),
    [
        ({}, "", 401),
        (bearer("wrong"), "", 403),
        (bearer(PUB[:-1]), "", 403),
        (bearer(PUB + "x"), "", 403),
        (bearer(SUB), "", 403),  # a subscriber token never grants publishing
        ({}, f"?token={PUB}", 401),  # publishing takes the header only
        ({"Authorization": f"Basic {PUB}"}, "", 401),
        ({"Authorization": "Bearer "}, "", 401),
        (bearer(PUB), "", 202),
        ({"Authorization": f"bearer   {PUB}  "}, "", 202),
    ],
)
async def test_publishing_needs_the_publish_token(
    client: httpx.AsyncClient, headers: dict[str, str], query: str, status: int
) -> None:
    response = await client.post("/events" + query, json=EVENT, headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("headers", "query", "status"),
    [
        ({}, "", 401),
        (bearer("nope"), "", 403),
        ({}, "?token=nope", 403),
        (bearer(SUB), "", 200),
        ({}, f"?token={SUB}", 200),
        (bearer(PUB), "", 200),  # the publish token also reads
    ],
)
async def test_reading_needs_a_token(
    client: httpx.AsyncClient, headers: dict[str, str], query: str, status: int
) -> None:
    response = await client.get("/events/history" + query, headers=headers)
    assert response.status_code == status, response.text


async def test_the_stream_refuses_without_a_token(tmp_path: Path) -> None:
    app = create_app(
        SSEEventBatcher(SQLiteJournal(tmp_path / "s.db")), token=PUB, subscribe_token=SUB
    )
    async with serve_app(app) as url:
        for path, headers, status in [
            ("/events", {}, 401),
            ("/events", bearer(PUB[::-1]), 403),
            (f"/events?token={SUB}", {}, 200),
        ]:
            client = RawSSEClient(url, path, headers)
            await client.connect()
            try:
                assert await client.read_head() == status
            finally:
                client.close()


async def test_every_token_check_goes_through_compare_digest(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(_auth.hmac, "compare_digest", spy)
    assert (await client.post("/events", json=EVENT, headers=bearer("x" * 25))).status_code == 403
    assert (await client.get("/events/history", headers=bearer(SUB))).status_code == 200
    assert len(calls) >= 3  # one per accepted token, no early exit
    source = inspect.getsource(_auth)
    assert "compare_digest" in source
    # No plain comparison of the presented token anywhere.
    assert not re.search(r"\b(given|presented)\s*(==|!=|in\s)", source)


def _request(token: str) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/events",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
    }
    return Request(scope)


def _median_ns(gate: AuthGate, request: Request, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        gate.require(request, "publish")
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples)


def test_near_miss_takes_no_longer_than_far_miss() -> None:
    """Rough, with generous bounds (the compare_digest check above is the real proof):
    a guess one byte off and a guess wrong at its first byte take the same time within
    50%. Measured ratio ~1.0; the request parsing around the comparison dominates, so
    this catches a gross leak (e.g. a per-character comparison loop), not a memcmp."""
    secret = "s" * 65536
    gate = AuthGate([StaticTokens(secret)])
    near = _request(secret[:-1] + "t")
    far = _request("t" + secret[1:])
    near_ns, far_ns = [], []
    for _ in range(5):  # interleaved rounds: drift in machine load hits both alike
        near_ns.append(_median_ns(gate, near, 200))
        far_ns.append(_median_ns(gate, far, 200))
    ratio = statistics.median(near_ns) / statistics.median(far_ns)
    assert 1 / 1.5 < ratio < 1.5, (near_ns, far_ns)


ADMIN = "admin-secret-5555555555"


@pytest.fixture
async def admin_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        SSEEventBatcher(SQLiteJournal(tmp_path / "adm.db")),
        token=PUB,
        subscribe_token=SUB,
        admin_token=ADMIN,
    )
    async with app_client(app) as c:
        yield c


@pytest.mark.parametrize(
    ("credentials", "status"),
    [({}, 401), (bearer(SUB), 403), (bearer(PUB), 403), (bearer("nope"), 403)],
)
async def test_admin_routes_need_the_admin_token(
    admin_client: httpx.AsyncClient, credentials: dict[str, str], status: int
) -> None:
    for method, path in [
        ("GET", "/workers"),
        ("GET", "/stats"),
        ("GET", "/metrics"),
        ("PATCH", "/workers/w"),
    ]:
        response = await admin_client.request(
            method, path, headers=credentials, json={"batching": False}
        )
        assert response.status_code == status, (method, path, response.text)
    # With an admin token set, the publish token is no longer the operator's.
    # The admin token does everything, and the cookie carries it as well as the header.
    assert (await admin_client.get("/stats", headers=bearer(ADMIN))).status_code == 200
    admin_client.cookies.set("sse_batcher_token", ADMIN)
    assert (await admin_client.get("/workers")).status_code == 200
    assert (await admin_client.post("/events", json=EVENT)).status_code == 202
    assert (await admin_client.get("/events/history")).status_code == 200


async def test_health_shows_details_only_to_admin(admin_client: httpx.AsyncClient) -> None:
    anonymous = await admin_client.get("/health")
    assert anonymous.status_code == 200
    assert anonymous.json() == {"status": "ok"}
    detailed = (await admin_client.get("/health", headers=bearer(ADMIN))).json()
    assert detailed["status"] == "ok" and "epoch" in detailed


async def test_a_capability_no_token_protects_is_open(tmp_path: Path) -> None:
    # --subscribe-token alone protects reading only: publishing and admin stay open
    # (serve warns about each when bound beyond loopback); "open" on purpose opens
    # reading although the publish token could protect it.
    app = create_app(SSEEventBatcher(SQLiteJournal(tmp_path / "o.db")), subscribe_token=SUB)
    async with app_client(app) as c:
        assert (await c.get("/events/history")).status_code == 401
        assert (await c.post("/events", json=EVENT)).status_code == 202
        assert (await c.get("/stats")).status_code == 200
    # The publish token protects publishing, reading and (without an admin token)
    # the admin routes; a public feed opens reading on purpose.
    app = create_app(
        SSEEventBatcher(SQLiteJournal(tmp_path / "p.db")),
        token=PUB,
        open_capabilities=("subscribe",),
    )
    async with app_client(app) as c:
        assert (await c.get("/events/history")).status_code == 200
        assert (await c.post("/events", json=EVENT)).status_code == 401
        assert (await c.get("/stats")).status_code == 401
        assert (await c.get("/stats", headers=bearer(PUB))).status_code == 200


@pytest.mark.parametrize("token", ["tökén", "with space", "", "tab\there"])
def test_unusable_tokens_are_refused_at_start(tmp_path: Path, token: str) -> None:
    from sse_batcher import ConfigError

    with pytest.raises(ConfigError, match="visible ASCII"):
        create_app(SSEEventBatcher(SQLiteJournal(tmp_path / "t.db")), token=token)
