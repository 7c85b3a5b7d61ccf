"""The plain request/response routes, in-process (httpx.ASGITransport, real SQLite).

Streaming, shutdown and limits over real sockets are in test_streaming.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from sse_batcher import ConfigError, SQLiteJournal, SSEEventBatcher, create_app
from sse_batcher.service._app import STATIC_DIR

from .servers import app_client

pytestmark = pytest.mark.anyio

Service = Callable[..., AbstractAsyncContextManager[tuple[Starlette, httpx.AsyncClient]]]


@pytest.fixture
def service(tmp_path: Path) -> Service:
    """``async with service(**create_app_kwargs) as (app, client)``; batcher options
    go in ``batcher={...}``, journal options in ``journal={...}``."""

    @asynccontextmanager
    async def make(
        *, batcher: dict[str, Any] | None = None, journal: dict[str, Any] | None = None, **kw: Any
    ) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
        store = SQLiteJournal(tmp_path / "app.db", **(journal or {}))
        app = create_app(SSEEventBatcher(store, **{"window": 0.05, **(batcher or {})}), **kw)
        async with app_client(app) as client:
            yield app, client

    return make


def event(n: int = 0, **extra: Any) -> dict[str, Any]:
    return {"type": "JOB_STARTED", "source": "w1", "data": {"job_id": n}, **extra}


async def stored(app: Starlette) -> list[dict[str, Any]]:
    """Flush, then every stored event's envelope."""
    await app.state.batcher.flush()
    rows = await app.state.journal.read_after(None, 10_000)
    return [orjson.loads(row.envelope_json()) for row in rows]


def members(rows: list[dict[str, Any]]) -> list[int]:
    """The job ids carried by stored rows, batch events unpacked."""
    ids: list[int] = []
    for row in rows:
        ids.extend(row["data"].get("job_ids", [row["data"].get("job_id")]))
    return ids


# -- ingest ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [event(1), [event(1)], {"events": [event(1)]}],
    ids=["object", "array", "wrapped"],
)
async def test_ingest_accepts_each_shape(service: Service, body: Any) -> None:
    async with service() as (app, client):
        response = await client.post("/events", json=body)
        assert response.status_code == 202
        assert response.json() == {"accepted": 1, "rejected": [], "duplicates": 0}
        [row] = await stored(app)
        assert (row["type"], row["source"], row["data"]) == ("JOB_STARTED", "w1", {"job_id": 1})


async def test_ingest_keeps_ts_and_defaults_data(service: Service) -> None:
    async with service() as (app, client):
        body = {"type": "PING", "source": "w1", "ts": 1700000000.5}
        assert (await client.post("/events", json=body)).status_code == 202
        [row] = await stored(app)
        assert (row["ts"], row["data"]) == (1700000000.5, {})


async def test_invalid_entries_are_reported_and_the_rest_accepted(service: Service) -> None:
    entries: list[Any] = [
        event(0),
        5,
        {"source": "w1"},
        {"type": "A", "source": "bad\nname"},
        {"type": "A", "source": "w1", "data": [1]},
        {"type": "A", "source": "w1", "ts": "yesterday"},
        {"type": "A", "source": "w1", "uid": 7},
        {"type": "A", "source": "w1", "colour": "red"},
        {"type": "A", "source": "w1", "data": {"blob": "x" * 70_000}},
        event(1),
    ]
    async with service(max_body_bytes=1 << 20) as (app, client):
        response = await client.post("/events", json=entries)
        assert response.status_code == 202
        body = response.json()
        assert body["accepted"] == 2
        assert [r["index"] for r in body["rejected"]] == [1, 2, 3, 4, 5, 6, 7, 8]
        errors = [r["error"] for r in body["rejected"]]
        assert "JSON object" in errors[0]
        assert "type is required" in errors[1]
        assert "CR, LF" in errors[2]
        assert "data must be a JSON object" in errors[3]
        assert "ts must be a number" in errors[4]
        assert "uid" in errors[5]
        assert "unknown field(s): colour" in errors[6]
        assert "limit" in errors[7]
        assert sorted(members(await stored(app))) == [0, 1]
        assert app.state.hub is not None
        stats = (await client.get("/stats")).json()["ingest"]
        assert (stats["accepted"], stats["rejected"]) == (2, 8)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'"a string"', "must be an event object"),
        (b"42", "must be an event object"),
        (b'{"events": 5}', "must be an event object"),
        (b'{"events": [], "extra": 1}', "must be an event object"),
    ],
)
async def test_unparseable_or_misshapen_bodies_get_400(
    service: Service, content: bytes, message: str
) -> None:
    async with service() as (_, client):
        response = await client.post("/events", content=content)
        assert response.status_code == 400
        assert message in response.json()["error"]


async def test_an_empty_array_is_accepted_as_nothing(service: Service) -> None:
    async with service() as (app, client):
        response = await client.post("/events", json=[])
        assert response.json() == {"accepted": 0, "rejected": [], "duplicates": 0}
        assert await stored(app) == []


async def test_oversize_bodies_get_413_by_header_or_by_stream(service: Service) -> None:
    async with service(max_body_bytes=1000) as (app, client):
        big = orjson.dumps([event(n) for n in range(100)])
        assert len(big) > 1000
        assert (await client.post("/events", content=big)).status_code == 413

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length
            for start in range(0, len(big), 100):
                yield big[start : start + 100]

        response = await client.post("/events", content=chunked())
        assert response.status_code == 413
        assert "1000 bytes" in response.json()["error"]
        assert (await client.post("/events", json=[event(1)])).status_code == 202
        assert members(await stored(app)) == [1]


async def test_a_full_queue_answers_503_all_or_nothing(service: Service) -> None:
    batcher = {"window": 30, "max_pending_events": 5, "overflow": "reject"}
    async with service(batcher=batcher) as (app, client):
        response = await client.post("/events", json=[event(n) for n in range(6)])
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert (await client.post("/events", json=[event(n) for n in range(3)])).status_code == 202
        # 3 more do not fit beside the 3 queued: none of them is taken.
        assert (
            await client.post("/events", json=[event(n) for n in range(3, 6)])
        ).status_code == 503
        assert app.state.batcher.stats().events_in == 3
        assert members(await stored(app)) == [0, 1, 2]


async def test_a_retried_uid_is_acknowledged_but_stored_once(service: Service) -> None:
    async with service() as (app, client):
        first = await client.post("/events", json=[event(1, uid="u-1"), event(2, uid="u-2")])
        assert first.json()["accepted"] == 2
        again = await client.post("/events", json=[event(1, uid="u-1"), event(3, uid="u-1")])
        assert again.json() == {"accepted": 0, "rejected": [], "duplicates": 2}
        assert sorted(members(await stored(app))) == [1, 2]


async def test_uids_are_remembered_across_a_restart(service: Service) -> None:
    async with service() as (app, client):
        await client.post("/events", json=event(1, uid="u-1"))
        await stored(app)
    async with service() as (app, client):
        response = await client.post("/events", json=event(1, uid="u-1"))
        assert response.json()["duplicates"] == 1
        assert members(await stored(app)) == [1]


async def test_a_rejected_request_does_not_burn_its_uids(service: Service) -> None:
    batcher = {"window": 30, "max_pending_events": 1, "overflow": "reject"}
    async with service(batcher=batcher) as (_app, client):
        body = [event(1, uid="a"), event(2, uid="b")]
        assert (await client.post("/events", json=body)).status_code == 503
        response = await client.post("/events", json=body[:1])
        assert response.json() == {"accepted": 1, "rejected": [], "duplicates": 0}


async def test_durable_ingest_answers_after_the_commit(service: Service) -> None:
    async with service(durable_ingest=True, batcher={"window": 0.2}) as (app, client):
        assert (await client.post("/events", json=[event(1), event(2)])).status_code == 202
        # No flush: the answer itself means both are in the journal.
        rows = await app.state.journal.read_after(None, 10)
        assert members([orjson.loads(r.envelope_json()) for r in rows]) == [1, 2]


# -- auth and CORS --------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), (bearer("sub"), 403), (bearer("nope"), 403), (bearer("pub"), 202)],
)
async def test_publishing_needs_the_publish_token(
    service: Service, headers: dict[str, str], status: int
) -> None:
    async with service(token="pub", subscribe_token="sub") as (_, client):
        assert (await client.post("/events", json=event(), headers=headers)).status_code == status
        patched = await client.patch("/workers/w1", json={"batching": False}, headers=headers)
        assert patched.status_code == (200 if status == 202 else status)


@pytest.mark.parametrize(
    ("headers", "query", "status"),
    [
        ({}, "", 401),
        (bearer("nope"), "", 403),
        ({}, "?token=nope", 403),
        (bearer("sub"), "", 200),
        ({}, "?token=sub", 200),
        (bearer("pub"), "", 200),
        ({"Authorization": "Basic c3ViOg=="}, "", 401),
    ],
)
async def test_reading_needs_the_subscribe_token(
    service: Service, headers: dict[str, str], query: str, status: int
) -> None:
    async with service(token="pub", subscribe_token="sub") as (_, client):
        response = await client.get(f"/events/history{query}", headers=headers)
        assert response.status_code == status
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer"


async def test_without_tokens_everything_is_open(service: Service) -> None:
    async with service() as (_, client):
        assert (await client.get("/events/history")).status_code == 200
        assert (await client.post("/events", json=event())).status_code == 202
        assert (await client.get("/stats")).status_code == 200


async def test_the_publish_token_alone_protects_reading_too(service: Service) -> None:
    # Reading stays open only when opened on purpose (open_capabilities).
    async with service(token="pub") as (_, client):
        assert (await client.get("/events/history")).status_code == 401
        assert (await client.post("/events", json=event())).status_code == 401
    async with service(token="pub", open_capabilities=["subscribe"]) as (_, client):
        assert (await client.get("/events/history")).status_code == 200


async def test_cors_allows_last_event_id(service: Service) -> None:
    async with service(cors_origins=["https://app.example"]) as (_, client):
        response = await client.options(
            "/events",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "last-event-id",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        assert "last-event-id" in response.headers["access-control-allow-headers"].lower()
        other = await client.get("/stats", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# -- history, workers, stats, metrics, health, dashboard -------------------------------


async def test_history_pages_through_every_event(service: Service) -> None:
    async with service() as (app, client):
        app.state.batcher.set_batching("w1", False)
        await client.post("/events", json=[event(n) for n in range(25)])
        await stored(app)
        seen: list[int] = []
        after = ""
        pages = 0
        while True:
            page = (await client.get(f"/events/history?limit=10&after={after}")).json()
            pages += 1
            seen.extend(e["data"]["job_id"] for e in page["events"])
            assert page["reset"] is None
            if not page["more"]:
                break
            after = page["next"]
            assert after == page["events"][-1]["id"]
        assert seen == list(range(25))
        assert pages == 3
        last = (await client.get(f"/events/history?after={page['next']}")).json()
        assert last["events"] == [] and last["next"] == page["next"]


async def test_history_limits_and_cursors(service: Service) -> None:
    async with service() as (app, client):
        await client.post("/events", json=event(1))
        await stored(app)
        assert (await client.get("/events/history?limit=0")).status_code == 400
        assert (await client.get("/events/history?limit=ten")).status_code == 400
        assert (await client.get("/events/history?after=x.y.z")).status_code == 400
        assert (await client.get("/events/history?limit=5000")).status_code == 200
        other_epoch = (await client.get("/events/history?after=zzz.1")).json()
        assert other_epoch["reset"]["reason"] == "epoch"
        assert [e["data"] for e in other_epoch["events"]] == [{"job_id": 1}]


async def test_workers_list_and_toggle(service: Service) -> None:
    async with service() as (app, client):
        await client.post("/events", json=[event(1), {**event(2), "source": "w2"}])
        await stored(app)
        workers = (await client.get("/workers")).json()["workers"]
        assert [(w["name"], w["events_in"], w["batching"]) for w in workers] == [
            ("w1", 1, True),
            ("w2", 1, True),
        ]
        response = await client.patch("/workers/w2", json={"batching": False})
        assert response.json() == {"name": "w2", "batching": False}
        assert not app.state.batcher.batching_enabled("w2")
        for bad in (b"{", b'{"batching": "no"}', b"[]", b'{"batching": true, "x": 1}'):
            assert (await client.patch("/workers/w2", content=bad)).status_code == 400


async def test_stats_and_metrics_show_every_part(service: Service) -> None:
    async with service() as (app, client):
        await client.post("/events", json=[event(1), event(2)])
        await stored(app)
        stats = (await client.get("/stats")).json()
        assert set(stats) == {"batcher", "journal", "hub", "ingest", "sinks", "auth"}
        assert stats["batcher"]["events_in"] == 2
        assert stats["ingest"]["accepted"] == 2
        response = await client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert "sse_batcher_events_in_total 2.0" in text
        assert "# TYPE sse_batcher_hub_subscribers gauge" in text
        assert 'sse_batcher_dropped_total{reason="queue_full"} 0.0' in text
        assert "sse_batcher_ingest_accepted_total 2.0" in text
        assert "sse_batcher_journal_rows_written_total" in text
        # Every metric name carries the prefix.
        names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
        assert names and all(name.startswith("sse_batcher_") for name in names)


async def test_two_apps_in_one_process_have_separate_metrics(tmp_path: Path) -> None:
    apps = [
        create_app(SSEEventBatcher(SQLiteJournal(tmp_path / f"{n}.db"), window=0.05))
        for n in range(2)
    ]
    async with app_client(apps[0]) as first, app_client(apps[1]) as second:
        await first.post("/events", json=event(1))
        await apps[0].state.batcher.flush()
        assert "sse_batcher_events_in_total 1.0" in (await first.get("/metrics")).text
        assert "sse_batcher_events_in_total 0.0" in (await second.get("/metrics")).text


async def test_health_is_503_while_the_journal_is_locked(service: Service, tmp_path: Path) -> None:
    async with service(journal={"busy_timeout": 0.1}) as (_, client):
        healthy = await client.get("/health")
        assert healthy.status_code == 200 and healthy.json()["status"] == "ok"
        locker = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            response = await client.get("/health")
            assert response.status_code == 503
            assert "locked" in response.json()["error"]
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert (await client.get("/health")).status_code == 200


async def test_dashboard_and_static_files(service: Service) -> None:
    async with service() as (_, client):
        page = await client.get("/")
        if (STATIC_DIR / "dashboard.html").is_file():
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
        else:
            assert page.status_code == 404
        script = await client.get("/static/sse-batcher.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        assert (await client.get("/static/missing.js")).status_code == 404


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_body_bytes": 0},
        {"retry_ms": -1},
        {"uid_ttl": -1},
        {"token": ""},
        {"subscribe_token": " x"},
        {"cors_origins": "https://one.example"},
        {"buffer_size": 0},
        {"max_subscribers": 0},
        {"heartbeat": 0},
    ],
)
def test_create_app_refuses_bad_configuration(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    batcher = SSEEventBatcher(SQLiteJournal(tmp_path / "x.db"))
    with pytest.raises(ConfigError):
        create_app(batcher, **kwargs)
