"""A wrong or missing token is loud: one ERROR naming the server's reason, and
``sse-batcher publish`` exits non-zero with it. Against a real ``serve --token``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sse_batcher import AsyncRemotePublisher, RemotePublisher
from tests.servers import ServerProcess

TOKEN = "right"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("auth") / "e.db"
    with ServerProcess(["--db", str(db), "--window-ms", "20", "--token", TOKEN]) as running:
        yield running


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sse_batcher.publisher" and r.levelno == logging.ERROR
    ]


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("wrong", 403)])
def test_the_sync_publisher_logs_one_error_with_the_reason(
    server: ServerProcess,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    token: str | None,
    status: int,
) -> None:
    with RemotePublisher(
        server.url, token=token, max_batch_size=5, spool_path=tmp_path / "spool"
    ) as publisher:
        for n in range(5):
            publisher.publish("TICK", {"n": n})
        publisher.flush()  # the first refusal ...
        for n in range(5, 15):
            publisher.publish("TICK", {"n": n})
    stats = publisher.stats()
    assert stats.rejected == 15 and stats.requests == 3  # ... and two more, not logged
    [message] = errors(caplog)
    assert f"HTTP {status}" in message and "token" in message
    assert server.url in message


@pytest.mark.anyio
@pytest.mark.parametrize(("token", "status"), [(None, 401), ("wrong", 403)])
async def test_the_async_publisher_logs_one_error_with_the_reason(
    server: ServerProcess,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    token: str | None,
    status: int,
) -> None:
    async with AsyncRemotePublisher(
        server.url, token=token, max_batch_size=5, spool_path=tmp_path / "spool"
    ) as publisher:
        for n in range(5):
            await publisher.publish("TICK", {"n": n})
        await publisher.flush()
        for n in range(5, 15):
            await publisher.publish("TICK", {"n": n})
    assert publisher.stats().rejected == 15
    [message] = errors(caplog)
    assert f"HTTP {status}" in message


def test_the_publish_command_exits_non_zero_with_the_reason(server: ServerProcess) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SSE_BATCHER_TOKEN"}
    completed = subprocess.run(
        [sys.executable, "-m", "sse_batcher", "publish", "TICK", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert completed.returncode == 1
    assert "HTTP 401" in completed.stderr
    accepted = subprocess.run(
        [
            sys.executable,
            "-m",
            "sse_batcher",
            "publish",
            "TICK",
            "--url",
            server.url,
            "--token",
            TOKEN,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert accepted.returncode == 0, accepted.stderr
