"""``sse-batcher publish``: one event, JSON lines from stdin, exit statuses."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from sse_batcher.cli._publish import EX_TEMPFAIL, PublishArgs, publish, run


def parse(*argv: str) -> PublishArgs:
    return PublishArgs(**publish.make_context("publish", list(argv)).params)


class Recorder:
    """A scripted server: ``status`` per request (default 202), or down."""

    def __init__(self, status: int = 202, *, down: bool = False) -> None:
        self.status = status
        self.down = down
        self.lock = threading.Lock()
        self.bodies: list[Any] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused")
        body = orjson.loads(request.content)
        with self.lock:
            self.bodies.append(body)
            self.headers.append(request.headers)
        if self.status != 202:
            return httpx.Response(self.status, json={"error": "invalid token"})
        entries = body["events"]
        return httpx.Response(202, json={"accepted": len(entries), "rejected": [], "duplicates": 0})

    @property
    def events(self) -> list[dict[str, Any]]:
        return [entry for body in self.bodies for entry in body["events"]]


def call(
    recorder: Recorder, *argv: str, stdin: str | None = None, url: str | None = "http://h:1"
) -> int:
    args = parse(*(["--url", url] if url else []), *argv)
    return run(
        args,
        stdin=io.StringIO(stdin) if stdin is not None else None,
        transport=httpx.MockTransport(recorder),
    )


def test_one_event(capsys: pytest.CaptureFixture[str]) -> None:
    recorder = Recorder()
    status = call(
        recorder, "JOB_STARTED", "--source", "cron", "--data", '{"job_id": 7}', "--token", "t0k"
    )
    assert status == 0
    [event] = recorder.events
    assert (event["type"], event["source"], event["data"]) == ("JOB_STARTED", "cron", {"job_id": 7})
    assert recorder.headers[0]["authorization"] == "Bearer t0k"
    assert capsys.readouterr().err == ""


def test_url_and_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_BATCHER_URL", "http://from-env:8000")
    monkeypatch.setenv("SSE_BATCHER_TOKEN", "envtoken")
    recorder = Recorder()
    assert call(recorder, "PING", url=None) == 0
    assert recorder.headers[0]["authorization"] == "Bearer envtoken"
    assert recorder.headers[0]["host"] == "from-env:8000"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["A", "--data", "{nope"], "--data is not JSON"),
        (["A", "--data", "[1]"], "data must be a JSON object"),
        (["BAD:TYPE"], "contains CR, LF, NUL or ':'"),
        (["-", "--data", "{}"], "--data goes with a TYPE"),
    ],
)
def test_bad_input_exits_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = Recorder()
    assert call(recorder, *argv) == 2
    assert message in capsys.readouterr().err
    assert recorder.bodies == []


def test_no_url_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SSE_BATCHER_URL", raising=False)
    assert call(Recorder(), "A", url=None) == 2
    assert "SSE_BATCHER_URL" in capsys.readouterr().err


def test_stdin_lines_are_batched_and_bad_lines_reported(capsys: pytest.CaptureFixture[str]) -> None:
    lines = [orjson.dumps({"type": "STEP", "data": {"n": n}}).decode() for n in range(23)]
    lines[5] = "{not json"
    lines[9] = "[1, 2]"
    lines[12] = '{"type": ""}'
    lines.insert(3, "   ")
    lines.append('{"type": "DONE", "source": "other", "ts": 12.5}')
    recorder = Recorder()
    status = call(recorder, "-", "--source", "pipe", "--batch-size", "10", stdin="\n".join(lines))
    assert status == 1
    err = capsys.readouterr().err
    assert "line 7: skipped: not JSON" in err
    assert "line 11: skipped: not a JSON object" in err
    assert "line 14: skipped: type must not be empty" in err
    assert "3 event(s) rejected" in err
    events = recorder.events
    assert [e["data"]["n"] for e in events[:-1]] == [n for n in range(23) if n not in (5, 9, 12)]
    assert {e["source"] for e in events[:-1]} == {"pipe"}
    assert (events[-1]["type"], events[-1]["source"], events[-1]["ts"]) == ("DONE", "other", 12.5)
    assert [len(body["events"]) for body in recorder.bodies] == [10, 10, 1]


def test_rejected_by_the_server_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    recorder = Recorder(403)
    assert call(recorder, "A") == 1
    err = capsys.readouterr().err
    assert "1 event(s) rejected" in err and "HTTP 403: invalid token" in err
    assert len(recorder.bodies) == 1  # not retried


def test_unreachable_without_spool_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert call(Recorder(down=True), "A", "--retry-for", "0.2") == 1
    err = capsys.readouterr().err
    assert "1 event(s) could not be delivered" in err and "ConnectError" in err


def test_unreachable_with_spool_exits_75_and_the_next_run_sends_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = str(tmp_path / "cli.jsonl")
    down = Recorder(down=True)
    status = call(down, "A", "--data", '{"n": 1}', "--spool", spool, "--retry-for", "0.1")
    assert status == EX_TEMPFAIL
    assert "1 event(s) could not be delivered yet" in capsys.readouterr().err
    assert Path(spool).exists()
    up = Recorder()
    assert call(up, "A", "--data", '{"n": 2}', "--spool", spool) == 0
    assert [e["data"]["n"] for e in up.events] == [1, 2]
    assert not Path(spool).exists()


def test_against_the_real_server(tmp_path: Path) -> None:
    from tests.servers import ServerProcess

    with ServerProcess(["--db", str(tmp_path / "e.db"), "--window-ms", "20"]) as server:
        args = parse("--url", server.url, "-", "--source", "shell")
        lines = "\n".join(
            orjson.dumps({"type": "LINE", "data": {"n": n}}).decode() for n in range(30)
        )
        assert run(args, stdin=io.StringIO(lines)) == 0
        # Through the real entry point, as a shell would run it.
        done = subprocess.run(
            [sys.executable, "-m", "sse_batcher", "publish", "SINGLE", "--data", '{"n": 30}'],
            env={**os.environ, "SSE_BATCHER_URL": server.url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        refused = subprocess.run(
            [
                sys.executable,
                "-m",
                "sse_batcher",
                "publish",
                "--url",
                server.url,
                "BAD",
                "--data",
                "7",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and "data must be a JSON object" in refused.stderr
        page = httpx.get(f"{server.url}/events/history", params={"limit": "1000"}).json()
    numbers = [
        item["n"]
        for event in page["events"]
        for item in (
            [i["data"] for i in event["data"]["items"]]
            if "batch_count" in event["data"]
            else [event["data"]]
        )
    ]
    assert numbers == list(range(31))


def test_channel_option_and_per_line_channel() -> None:
    recorder = Recorder()
    assert call(recorder, "A", "--channel", "user.42") == 0
    lines = '{"type": "B"}\n{"type": "C", "channel": "user.7.jobs"}\n'
    assert call(recorder, "-", "--channel", "ops", stdin=lines) == 0
    assert [(e["type"], e.get("channel")) for e in recorder.events] == [
        ("A", "user.42"),
        ("B", "ops"),
        ("C", "user.7.jobs"),
    ]
    assert call(Recorder(), "A", "--channel", "user.*") == 2
