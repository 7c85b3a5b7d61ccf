"""``sse-batcher serve``: options and environment, validation, signals, restart and resume."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from sse_batcher import Service, ServiceSettings
from sse_batcher.cli._main import main, serve
from sse_batcher.cli._options import OPTIONS, ServerSettings

from .servers import ServerProcess

pytestmark = pytest.mark.anyio


def parse(*argv: str) -> ServerSettings:
    return ServerSettings.from_params(serve.make_context("serve", list(argv)).params)


def server_settings(settings: ServerSettings) -> ServiceSettings:
    return settings.service


def test_help_documents_every_option_with_its_default_and_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in OPTIONS:
        assert option.flag in text
        assert f"env var: {option.env}" in text
    assert "[env var: SSE_BATCHER_HOST; default: 127.0.0.1]" in text
    assert "[env var: SSE_BATCHER_WINDOW_MS; default: 500]" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from sse_batcher import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"sse-batcher, version {__version__}\n"


def test_python_dash_m_is_the_same_program() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sse_batcher", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert "serve" in result.stdout


def test_defaults_environment_and_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    server = parse()
    defaults = server_settings(server)
    assert (server.host, server.port, defaults.db, defaults.window_ms) == (
        "127.0.0.1",
        8000,
        "sse_events.db",
        500,
    )
    assert (defaults.token, defaults.cors_origin, defaults.durable_ingest) == (None, (), False)
    monkeypatch.setenv("SSE_BATCHER_WINDOW_MS", "50")
    monkeypatch.setenv("SSE_BATCHER_CORS_ORIGIN", "https://a.example, https://b.example/")
    monkeypatch.setenv("SSE_BATCHER_DURABLE_INGEST", "yes")
    monkeypatch.setenv("SSE_BATCHER_TOKEN", "secret")
    from_env = server_settings(parse())
    assert from_env.window_ms == 50
    assert from_env.cors_origin == ("https://a.example", "https://b.example")
    assert from_env.durable_ingest is True
    assert from_env.token == "secret"
    cli_wins = server_settings(parse("--window-ms", "70", "--cors-origin", "https://c.example"))
    assert (cli_wins.window_ms, cli_wins.cors_origin) == (70, ("https://c.example",))


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "0"], {}, "--port: must be between 1 and 65535, got 0"),
        (["--window-ms", "fast"], {}, "--window-ms: expected an integer, got 'fast'"),
        (["--heartbeat", "-1"], {}, "--heartbeat: must be a positive number"),
        (["--log-level", "loud"], {}, "--log-level: must be one of"),
        (["--cors-origin", "example.com"], {}, "--cors-origin: an origin looks like"),
        (["--redis-url", "localhost:6379"], {}, "--redis-url: expected redis://"),
        ([], {"SSE_BATCHER_MAX_BATCH": "0"}, "SSE_BATCHER_MAX_BATCH: must be between 1 and"),
        ([], {"SSE_BATCHER_DURABLE_INGEST": "maybe"}, "SSE_BATCHER_DURABLE_INGEST"),
        (["--token", " padded "], {}, "--token: must be non-empty"),
    ],
)
def test_invalid_values_fail_in_one_line_with_status_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("sse-batcher serve: error: ")
    assert message in err


def test_unknown_arguments_fail_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No such option" in err and "--no-such-flag" in err


def test_the_service_picks_journal_and_sinks_from_the_options(tmp_path: Path) -> None:
    service = Service(
        server_settings(parse("--db", str(tmp_path / "x.db"), "--archive", str(tmp_path / "arc")))
    )
    assert type(service.journal).__name__ == "SQLiteJournal"
    assert service.batcher.window == 0.5
    redis = Service(
        server_settings(parse("--redis-url", "redis://127.0.0.1:1/0", "--window-ms", "100"))
    )
    assert type(redis.journal).__name__ == "RedisJournal"
    assert redis.batcher.window == 0.1


def post(url: str, events: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{url}/events", json=events, timeout=10)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(events)


def count_rows(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_the_window_and_prints_a_summary(tmp_path: Path, stop_signal: int) -> None:
    db = tmp_path / "drain.db"
    with ServerProcess(["--db", str(db), "--window-ms", "30000"]) as server:
        post(
            server.url,
            [{"type": "JOB_STARTED", "source": "w", "data": {"job_id": n}} for n in range(7)],
        )
        output = server.stop(stop_signal)
        assert server.returncode == 0, output
    assert "7 events in, 1 messages out (7 events written in 1 writes)" in output
    assert count_rows(db) == 1  # the 7 members, written as one batch event at shutdown


def test_a_server_that_cannot_open_its_journal_exits_1(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sse_batcher", "serve", "--db", str(tmp_path), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "the server did not start" in result.stderr


def test_a_missing_database_directory_is_one_line_with_status_2(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    result = subprocess.run(
        [sys.executable, "-m", "sse_batcher", "serve", "--db", str(missing / "e.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"sse-batcher serve: error: --db: the directory {str(missing)!r} does not exist\n"
    )


def test_serve_says_where_it_listens(tmp_path: Path) -> None:
    with ServerProcess(["--db", str(tmp_path / "e.db"), "--log-level", "info"]) as server:
        output = server.stop()
    assert f"listening on {server.url} (dashboard at /)" in output


async def test_resume_after_a_restart_on_the_same_database(tmp_path: Path) -> None:
    """A client reads part of the stream, the server restarts (draining what was still in
    its window), and the client resumes with its last id: every later event exactly once."""
    db = str(tmp_path / "restart.db")
    # Batches of 10 flush at once; a remainder waits for a window longer than the test.
    args = ["--db", db, "--window-ms", "60000", "--max-batch", "10"]

    def events(numbers: range) -> list[dict[str, Any]]:
        return [{"type": "JOB_STARTED", "source": "w", "data": {"job_id": n}} for n in numbers]

    seen: list[int] = []
    async with ServerProcess(args) as first, httpx.AsyncClient(timeout=10) as client:
        await anyio.to_thread.run_sync(post, first.url, events(range(50)))
        async with aconnect_sse(client, "GET", f"{first.url}/events?last_event_id=0") as source:
            with anyio.fail_after(15):
                async for message in source.aiter_sse():
                    if message.data:
                        seen.extend(message.json()["data"]["job_ids"])
                        last_id = message.id
                    if len(seen) == 20:
                        break
        # 25 more: two batches go out at once, five are still in the window at SIGTERM.
        await anyio.to_thread.run_sync(post, first.url, events(range(50, 75)))
        output = await anyio.to_thread.run_sync(first.stop)
        assert first.returncode == 0, output
        assert "75 events in, 8 messages out" in output

    async with ServerProcess(args) as second, httpx.AsyncClient(timeout=10) as client:
        await anyio.to_thread.run_sync(post, second.url, events(range(75, 85)))
        headers = {"Last-Event-ID": last_id}
        async with aconnect_sse(client, "GET", f"{second.url}/events", headers=headers) as source:
            with anyio.fail_after(15):
                async for message in source.aiter_sse():
                    if message.data:
                        data = orjson.loads(message.data)["data"]
                        seen.extend(data.get("job_ids", [data.get("job_id")]))
                    if len(seen) >= 85:
                        break
    assert seen == list(range(85))
