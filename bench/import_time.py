"""Import time: what ``import sse_batcher`` costs a worker that only publishes.

Each case runs in a fresh interpreter (``sys.executable -c``) that times its own
imports with ``perf_counter`` (interpreter start-up excluded) and lists the
third-party packages they loaded. Cases alternate run by run so load on a shared
machine hits them alike; the median of the runs counts. The baseline, measured in
the same run, is the full stack: every public name plus the CLI module, which is
what ``import sse_batcher`` loaded before names became lazy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from . import ROOT, percentile, row

__all__ = ["CASES", "measure", "run"]

# case -> the statements it times
CASES: dict[str, str] = {
    "import sse_batcher": "import sse_batcher",
    "publishing worker": (
        "import sse_batcher\nfrom sse_batcher import Event, RemotePublisher, SSEBroadcasterMixin"
    ),
    "full stack (baseline)": (
        "import sse_batcher\n"
        "for name in sse_batcher.__all__: getattr(sse_batcher, name)\n"
        "import sse_batcher.service._metrics, sse_batcher.cli._main"
    ),
}
HEAVY = ("uvicorn", "starlette", "sse_starlette", "redis", "prometheus_client", "aiosqlite")
TARGET_RATIO = 0.5

_CHILD = """
import sys, time, json
before = set(sys.modules)
t0 = time.perf_counter()
exec(compile(sys.argv[1], "<case>", "exec"))
seconds = time.perf_counter() - t0
loaded = {m.partition(".")[0] for m in set(sys.modules) - before}
print(json.dumps({"seconds": seconds, "loaded": sorted(loaded)}))
"""


def measure(statements: str) -> dict[str, Any]:
    """Seconds and top-level packages loaded by ``statements`` in a fresh interpreter."""
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, statements],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def run(quick: bool) -> list[dict[str, Any]]:
    runs = 5 if quick else 15
    seconds: dict[str, list[float]] = {case: [] for case in CASES}
    loaded: dict[str, list[str]] = {}
    measure("pass")  # warm the file cache so the first case is not the one paying for it
    for _ in range(runs):
        for case, statements in CASES.items():
            result = measure(statements)
            seconds[case].append(result["seconds"])
            loaded[case] = result["loaded"]
    baseline = percentile(seconds["full stack (baseline)"], 0.5)
    rows = []
    for case in CASES:
        median = percentile(seconds[case], 0.5)
        heavy = [name for name in HEAVY if name in loaded[case]]
        note = (
            f"median of {runs} fresh interpreters; "
            f"heavy packages loaded: {', '.join(heavy) or 'none'}"
        )
        if case == "full stack (baseline)":
            rows.append(row("import time", case, median * 1000, "ms", note=note))
            continue
        ratio = median / baseline
        target_met = ratio <= TARGET_RATIO and (case == "import sse_batcher" or not heavy)
        rows.append(
            row(
                "import time",
                case,
                median * 1000,
                "ms",
                f"<= {TARGET_RATIO:.0%} of full stack",
                target_met,
                f"{ratio:.0%} of the full stack; {note}",
            )
        )
    return rows


if __name__ == "__main__":
    for r in run("--quick" in sys.argv):
        print(json.dumps(r))
