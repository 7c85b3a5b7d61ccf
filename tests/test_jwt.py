"""JWT credentials against real ``sse-batcher serve`` processes: tokens minted here
(HS256 and ES256) decide which channels a reader gets, live, on replay, in history
and after a restart; bad tokens get 401; forbidden publishes are refused per entry;
two Redis nodes enforce the same rules; an expiring token ends its stream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from httpx_sse import ServerSentEvent, aconnect_sse

from sse_batcher import ConfigError, JWTVerifier, SQLiteJournal, SSEEventBatcher, create_app
from tests.servers import ServerProcess, serve_app
from tests.test_redis_journal import prefix

__all__ = ["prefix"]  # a fixture, imported to be used here

pytestmark = pytest.mark.anyio

SECRET = "test-secret-of-at-least-32-bytes-0123456789"


def mint(
    key: Any,
    *,
    subscribe: list[str] = (),  # type: ignore[assignment]
    publish: list[str] = (),  # type: ignore[assignment]
    admin: bool = False,
    algorithm: str = "HS256",
    expires_in: float = 300,
    **claims: Any,
) -> str:
    payload = {
        "sub": "user-1",
        "exp": int(time.time() + expires_in),
        "sse_batcher": {"subscribe": list(subscribe), "publish": list(publish), "admin": admin},
        **claims,
    }
    return jwt.encode(payload, key, algorithm=algorithm)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def job(channel: str, n: int) -> dict[str, Any]:
    return {"type": "JOB_STARTED", "source": "w", "channel": channel, "data": {"n": n}}


def steps(envelope: dict[str, Any]) -> list[int]:
    data = envelope["data"]
    return [item["data"]["n"] for item in data["items"]] if "items" in data else [data["n"]]


class Reader:
    """An SSE client collecting envelopes in the background."""

    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self.connected = anyio.Event()
        self.ended = anyio.Event()
        self.received = anyio.Event()  # replaced after every wait

    @property
    def steps(self) -> list[int]:
        return [n for e in self.envelopes for n in steps(e)]

    @property
    def channels(self) -> set[str]:
        return {e["channel"] for e in self.envelopes}

    async def read(self, url: str, headers: dict[str, str], cookies: dict[str, str]) -> None:
        timeout = httpx.Timeout(10.0, read=None)
        try:
            async with (
                httpx.AsyncClient(timeout=timeout, cookies=cookies) as client,
                aconnect_sse(client, "GET", url, headers=headers) as source,
            ):
                assert source.response.status_code == 200
                sse: ServerSentEvent
                async for sse in source.aiter_sse():
                    if sse.retry is not None:
                        self.connected.set()
                    if sse.data:
                        self.envelopes.append(orjson.loads(sse.data))
                        self.received.set()
        finally:
            self.ended.set()

    async def wait_for(self, *wanted: int) -> None:
        with anyio.fail_after(10):
            while not set(wanted) <= set(self.steps):
                await self.received.wait()
                self.received = anyio.Event()


@asynccontextmanager
async def reading(
    url: str,
    path: str = "/events",
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
) -> AsyncIterator[Reader]:
    reader = Reader()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reader.read, url + path, headers or {}, cookies or {})
        with anyio.fail_after(10):
            await reader.connected.wait()
        yield reader
        tg.cancel_scope.cancel()


async def post(url: str, token: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{url}/events", json=entries, headers=bearer(token))
    assert answer.status_code == 202, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_a_reader_of_user_1_never_sees_user_2_live_replayed_in_history_or_after_restart(
    tmp_path: Path,
) -> None:
    args = ["--db", str(tmp_path / "j.db"), "--jwt-secret", SECRET, "--window-ms", "20"]
    reader_token = mint(SECRET, subscribe=["user.1.*"])
    writer_token = mint(SECRET, publish=["*"])
    async with ServerProcess(args) as server:
        url = server.url
        async with (
            reading(url, headers=bearer(reader_token)) as everything_allowed,
            reading(
                url, "/events?channel=user.1.jobs", cookies={"sse_batcher_token": reader_token}
            ) as by_cookie,
        ):
            # user.2 first: had it leaked, it would arrive before what we wait for
            await post(url, writer_token, [job("user.2.jobs", 0), job("user.1.jobs", 1)])
            await post(url, writer_token, [job("default", 2), job("user.1.jobs", 3)])
            for reader in (everything_allowed, by_cookie):
                await reader.wait_for(1, 3)
                assert reader.steps == [1, 3] and reader.channels == {"user.1.jobs"}
            first_id = everything_allowed.envelopes[0]["id"]
        async with httpx.AsyncClient(base_url=url) as client:
            history = (await client.get(f"/events/history?token={reader_token}")).json()
            assert [e["data"]["n"] for e in history["events"]] == [1, 3]
            denied = await client.get("/events?channel=user.2.jobs", headers=bearer(reader_token))
            assert denied.status_code == 403 and "user.2.jobs" in denied.json()["error"]
            denied = await client.get("/events/history?channel=*", headers=bearer(reader_token))
            assert denied.status_code == 403
            assert (await client.get("/events")).status_code == 401  # no token
        await anyio.to_thread.run_sync(server.stop)

    async with ServerProcess(args, port=server.port) as server:
        await post(server.url, writer_token, [job("user.2.jobs", 10), job("user.1.jobs", 11)])
        headers = {**bearer(reader_token), "Last-Event-ID": first_id}
        async with reading(server.url, headers=headers) as replay:
            await replay.wait_for(3, 11)
            await post(server.url, writer_token, [job("user.2.jobs", 20), job("user.1.jobs", 21)])
            await replay.wait_for(21)
            assert replay.steps == [3, 11, 21] and replay.channels == {"user.1.jobs"}


@pytest.fixture
def es256(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "jwt.pub.pem"
    path.write_bytes(pem)
    return key, path


async def test_es256_tokens_and_every_bad_token_gets_a_401(
    tmp_path: Path, es256: tuple[ec.EllipticCurvePrivateKey, Path]
) -> None:
    key, public_path = es256
    other_key = ec.generate_private_key(ec.SECP256R1())
    args = ["--db", str(tmp_path / "j.db"), "--window-ms", "20"]
    args += ["--jwt-public-key", str(public_path), "--jwt-audience", "sse", "--jwt-issuer", "me"]

    def es(**kw: Any) -> str:
        return mint(key, algorithm="ES256", aud="sse", iss="me", **kw)

    good = es(subscribe=["user.1.*"])
    bad = {
        "forged": mint(other_key, algorithm="ES256", aud="sse", iss="me", subscribe=["*"]),
        "expired": es(subscribe=["*"], expires_in=-120),
        "wrong audience": mint(key, algorithm="ES256", aud="other", iss="me", subscribe=["*"]),
        "wrong issuer": mint(key, algorithm="ES256", aud="sse", iss="them", subscribe=["*"]),
        "alg none": mint(None, algorithm="none", aud="sse", iss="me", subscribe=["*"]),
        # the public key used as an HMAC secret: the algorithm-confusion attack
        "alg confusion": _hs256_with(public_path.read_bytes()),
        "bad claim": es(subscribe=["user.*.jobs"]),
    }
    async with ServerProcess(args) as server, httpx.AsyncClient(base_url=server.url) as client:
        for what, token in bad.items():
            for path in ("/events", "/events/history"):
                answer = await client.get(path, headers=bearer(token))
                assert answer.status_code == 401, (what, path, answer.text)
                assert answer.headers["www-authenticate"].startswith("Bearer")
            answer = await client.post("/events", json=job("x", 1), headers=bearer(token))
            assert answer.status_code == 401, what
        assert (await client.get("/events/history", headers=bearer(good))).status_code == 200
        # publish: per entry, by channel
        publisher = es(publish=["user.1.*"])
        admin = es(subscribe=["*"], admin=True)
        entries = [job("user.1.jobs", 1), job("user.2.jobs", 2), job("default", 3)]
        async with reading(server.url, headers=bearer(admin)) as everything:
            answer = await client.post("/events", json=entries, headers=bearer(publisher))
            assert answer.status_code == 202
            body = answer.json()
            assert body["accepted"] == 1
            assert [(r["index"], r["status"]) for r in body["rejected"]] == [(1, 403), (2, 403)]
            await everything.wait_for(1)
        stored = (await client.get("/events/history", headers=bearer(admin))).json()
        assert [(e["channel"], e["data"]["n"]) for e in stored["events"]] == [("user.1.jobs", 1)]
        assert (await client.get("/stats", headers=bearer(good))).status_code == 403
        assert (await client.get("/stats", headers=bearer(admin))).status_code == 200


def _hs256_with(secret: bytes) -> str:
    """An HS256 token keyed with ``secret`` (PyJWT refuses a PEM as an HMAC key, so the
    signature is computed by hand, as an attacker would)."""
    import base64
    import hashlib
    import hmac

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    header = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    claims = {
        "exp": int(time.time()) + 60,
        "aud": "sse",
        "iss": "me",
        "sse_batcher": {"subscribe": ["*"]},
    }
    body = b64(orjson.dumps(claims))
    signature = b64(hmac.new(secret, header + b"." + body, hashlib.sha256).digest())
    return (header + b"." + body + b"." + signature).decode()


async def test_an_expiring_token_ends_its_stream_at_expiry(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.db")
    verifier = JWTVerifier(secret=SECRET, leeway=0)
    app = create_app(SSEEventBatcher(journal, window=0.02), verifiers=[verifier])
    token = mint(SECRET, subscribe=["*"], expires_in=2)
    async with serve_app(app) as url, reading(url, headers=bearer(token)) as reader:
        app.state.batcher.emit("JOB_STARTED", {"n": 1}, source="w", channel="a")
        await reader.wait_for(1)
        started = time.monotonic()
        with anyio.fail_after(10):
            await reader.ended.wait()
        assert time.monotonic() - started < 5  # at expiry, not at some later heartbeat
        async with httpx.AsyncClient(base_url=url) as client:
            again = await client.get("/events", headers=bearer(token))
            assert again.status_code == 401 and "expired" in again.json()["error"]


def test_verifier_configuration_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        JWTVerifier()
    with pytest.raises(ConfigError, match="32 bytes"):
        JWTVerifier(secret="short")
    with pytest.raises(ConfigError, match="leeway"):
        JWTVerifier(secret=SECRET, leeway=60)
    with pytest.raises(ConfigError, match="PEM"):
        JWTVerifier(public_key=b"not a key")
    assert JWTVerifier(secret=SECRET).algorithms == ("HS256", "HS384", "HS512")


@pytest.mark.redis
async def test_two_redis_nodes_enforce_the_same_rules(redis_url: str, prefix: str) -> None:
    args = ["--redis-url", redis_url, "--redis-prefix", prefix, "--window-ms", "20"]
    args += ["--jwt-secret", SECRET]
    reader_token = mint(SECRET, subscribe=["user.1.*"])
    writer_token = mint(SECRET, publish=["*"])
    limited_writer = mint(SECRET, publish=["user.2.*"])
    async with ServerProcess(args) as node_a, ServerProcess(args) as node_b:
        async with reading(node_b.url, headers=bearer(reader_token)) as on_b:
            await post(node_a.url, writer_token, [job("user.2.jobs", 0), job("user.1.jobs", 1)])
            body = await post(
                node_b.url, limited_writer, [job("user.1.jobs", 2), job("user.2.jobs", 3)]
            )
            assert (body["accepted"], [r["index"] for r in body["rejected"]]) == (1, [0])
            await post(node_b.url, writer_token, [job("user.1.jobs", 4)])
            await on_b.wait_for(1, 4)
            assert on_b.steps == [1, 4] and on_b.channels == {"user.1.jobs"}
        for node in (node_a, node_b):
            async with httpx.AsyncClient(base_url=node.url) as client:
                page = (await client.get("/events/history", headers=bearer(reader_token))).json()
                assert [e["data"]["n"] for e in page["events"]] == [1, 4]
                forbidden = await client.get(
                    "/events?channel=user.2.*", headers=bearer(reader_token)
                )
                assert forbidden.status_code == 403


async def test_the_docs_backend_route_gives_user_42_its_channels_only(tmp_path: Path) -> None:
    from tests.docs_blocks import ROOT, blocks

    page_blocks = blocks(ROOT / "docs" / "channels.md")
    [backend] = [b for b in page_blocks if "sse_token" in b.code]
    [frontend] = [b for b in page_blocks if b.lang == "html" and "token" in b.code]

    def lines(code: str) -> int:
        return sum(1 for line in code.splitlines() if line.strip() and "script" not in line)

    assert lines(backend.code) + lines(frontend.code) <= 15  # what the page promises
    namespace: dict[str, Any] = {}
    exec(compile(backend.code, backend.where, "exec"), namespace)
    transport = httpx.ASGITransport(app=namespace["app"])
    async with httpx.AsyncClient(transport=transport, base_url="http://backend") as backend_client:
        token = (await backend_client.get("/sse-token")).json()["token"]
    args = ["--db", str(tmp_path / "j.db"), "--window-ms", "20"]
    args += ["--jwt-secret", namespace["SECRET"]]
    writer = mint(namespace["SECRET"], publish=["*"])
    async with ServerProcess(args) as server, reading(server.url, headers=bearer(token)) as page:
        await post(
            server.url,
            writer,
            [job("user.43.jobs", 1), job("user.42", 2), job("user.420", 3), job("user.42.jobs", 4)],
        )
        await page.wait_for(2, 4)
        assert page.steps == [2, 4] and page.channels == {"user.42", "user.42.jobs"}


async def test_a_token_in_the_query_is_redacted_from_the_access_log(tmp_path: Path) -> None:
    token = mint(SECRET, subscribe=["*"])
    args = ["--db", str(tmp_path / "j.db"), "--jwt-secret", SECRET, "--log-level", "info"]
    async with ServerProcess(args) as server, httpx.AsyncClient(base_url=server.url) as client:
        answer = await client.get(f"/events/history?limit=1&token={token}")
        assert answer.status_code == 200
        output = await anyio.to_thread.run_sync(server.stop)
    assert "/events/history?limit=1&token=[redacted]" in output
    assert token not in output and token.split(".")[2] not in output
