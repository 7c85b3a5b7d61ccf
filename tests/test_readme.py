"""The README stays a first screen and a short tour, and its first example runs and
prints what the README says it prints. (Every other code block of the README and of
docs/ is run or checked by test_docs.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_first_example_prints_one_batch_event(tmp_path: Path) -> None:
    text = README.read_text()
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match, "README has no python example"
    code = match.group(1)
    assert len(code.strip().splitlines()) <= 16, "the first-screen example should stay short"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert "JOBS_BATCH_STARTED" in lines[0] and "[123, 124, 125]" in lines[0]


def test_every_name_the_readme_imports_is_exported() -> None:
    import sse_batcher

    names = {
        name.strip()
        for line in re.findall(r"from sse_batcher import ([\w, ]+)", README.read_text())
        for name in line.split(",")
    }
    assert names, "the README imports nothing from sse_batcher"
    assert names <= set(sse_batcher.__all__), names - set(sse_batcher.__all__)


def test_every_make_target_the_readme_names_exists() -> None:
    makefile = (README.parent / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z]+):", makefile, re.M))
    named = set(re.findall(r"`make (\w+)", README.read_text()))
    assert {"demo", "test"} <= named
    assert named <= targets, named - targets


def test_readme_stays_short() -> None:
    # The details live in docs/; the README keeps the first screen and one example per part.
    size = len(README.read_bytes())
    assert size <= 13_000, f"README.md is {size} bytes: move detail to a page under docs/"
