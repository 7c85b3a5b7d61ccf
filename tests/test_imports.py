"""Light imports: a worker that only publishes loads no server, Redis or metrics code.

Each check runs in a fresh interpreter, because this test process has long since
imported everything. A missing optional dependency is simulated the way Python
itself spells "not installed": ``sys.modules[name] = None`` makes its import raise
``ModuleNotFoundError``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import sse_batcher

ROOT = Path(__file__).resolve().parent.parent

# What a publishing worker must not pay for: the server, Redis, metrics, the journal.
HEAVY = (
    "uvicorn",
    "starlette",
    "sse_starlette",
    "redis",
    "prometheus_client",
    "aiosqlite",
    "sse_batcher.service",
    "sse_batcher.journals",
    "sse_batcher.cli",
)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def loaded_after(code: str) -> list[str]:
    completed = run_python(code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))")
    assert completed.returncode == 0, completed.stderr
    modules: list[str] = json.loads(completed.stdout.splitlines()[-1])
    return modules


def heavy_in(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(f"{h}.") for h in HEAVY)]


def test_a_publishing_worker_loads_no_server_redis_or_metrics_module() -> None:
    modules = loaded_after(
        "import sse_batcher\n"
        "from sse_batcher import RemotePublisher, SSEBroadcasterMixin, Event\n"
        "assert RemotePublisher and SSEBroadcasterMixin and Event"
    )
    assert "sse_batcher.publishing._publisher" in modules  # the check itself can see loads
    assert heavy_in(modules) == []


def test_the_full_stack_does_load_them_so_the_check_above_can_fail() -> None:
    modules = loaded_after(
        "import sse_batcher\nfor name in sse_batcher.__all__: getattr(sse_batcher, name)"
    )
    assert {"starlette", "redis", "aiosqlite", "sse_batcher.service._app"} <= set(modules)


def test_every_exported_name_resolves_and_nothing_public_is_left_out() -> None:
    completed = run_python(
        """
        import json, sse_batcher
        for name in sse_batcher.__all__:
            getattr(sse_batcher, name)
        public = sorted(
            n for n, v in vars(sse_batcher).items()
            if not n.startswith("_") and getattr(v, "__module__", "").startswith("sse_batcher")
        )
        print(json.dumps(public))
        """
    )
    assert completed.returncode == 0, completed.stderr
    public = set(json.loads(completed.stdout))
    assert public == set(sse_batcher.__all__) - {"__version__"}


def test_dir_lists_every_public_name_before_it_is_loaded() -> None:
    completed = run_python("import sse_batcher, json; print(json.dumps(dir(sse_batcher)))")
    assert completed.returncode == 0, completed.stderr
    assert set(sse_batcher.__all__) <= set(json.loads(completed.stdout))


def test_an_unknown_name_is_an_attribute_error() -> None:
    assert not hasattr(sse_batcher, "NoSuchThing")


def test_a_missing_extra_names_the_extra_to_install() -> None:
    completed = run_python(
        """
        import sys
        sys.modules["redis"] = None  # not installed
        from sse_batcher import RedisJournal
        """
    )
    assert completed.returncode == 1
    assert "pip install 'sse_batcher[redis]'" in completed.stderr


def test_the_app_without_prometheus_client_serves_and_explains_metrics(tmp_path: Path) -> None:
    completed = run_python(
        f"""
        import sys
        sys.modules["prometheus_client"] = None  # the [metrics] extra is not installed
        import anyio, httpx
        from sse_batcher import SQLiteJournal, SSEEventBatcher, create_app

        async def main():
            journal = SQLiteJournal({str(tmp_path / "j.db")!r})
            app = create_app(SSEEventBatcher(journal), journal=journal)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.get("/metrics")
                print(response.status_code, response.json()["error"])
                response = await client.get("/stats")
                print(response.status_code)

        anyio.run(main)
        assert "prometheus_client" not in {{m for m in sys.modules if sys.modules[m]}}
        """
    )
    assert completed.returncode == 0, completed.stderr
    metrics_line, stats_line = completed.stdout.splitlines()
    assert metrics_line.startswith("501 ") and "sse_batcher[metrics]" in metrics_line
    assert stats_line == "200"
