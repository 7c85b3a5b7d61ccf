"""The package's house plan, checked: imports point one way and never form a circle.

Each sub-package may import only the layers named in ``ALLOWED`` (its own modules and
``sse_batcher._exceptions`` always). Imports under ``TYPE_CHECKING`` and inside functions
count too: a circle hidden behind a lazy import is still a circle a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sse_batcher"

# The base every layer may import: one-module layers at the top of the package.
BASE = {"_exceptions", "_lifecycle", "_backoff"}
# layer -> the layers it may import (besides itself and BASE)
ALLOWED: dict[str, set[str]] = {
    "_exceptions": set(),
    "_lifecycle": set(),
    "_backoff": set(),
    "batching": set(),
    "journals": {"batching"},
    "sinks": {"batching"},
    "publishing": {"batching"},
    "workers": {"batching", "publishing"},
    "subscribing": {"batching"},
    "service": {"batching", "journals", "sinks"},
    "embedding": {"batching", "journals", "sinks", "service"},
    "cli": {
        "batching",
        "journals",
        "sinks",
        "service",
        "publishing",
        "workers",
        "subscribing",
        "embedding",
    },
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``sse_batcher.*`` module that ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    package = (
        module_name(path).rpartition(".")[0] if path.name != "__init__.py" else module_name(path)
    )
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("sse_batcher"):
                found.add(base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sse_batcher"))
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imported_modules(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_imports_follow_the_allowed_directions() -> None:
    wrong = []
    for module, targets in graph().items():
        source = layer_of(module)
        if source is None or source == "__main__":  # the top-level facade may import anything
            continue
        assert source in ALLOWED, f"{module}: new layer {source!r} needs a row in ALLOWED"
        for target in targets:
            dest = layer_of(target)
            if dest in (None, source) or dest in BASE:
                if dest is None:
                    wrong.append(f"{module} -> {target} (the facade imports parts, not back)")
                continue
            if dest not in ALLOWED[source]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the house plan:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


MODULES = sorted(PACKAGE.rglob("*.py"))
# Being split (issue 16); remove a name when its module is under the limit.
SPLIT_PENDING: set[str] = set()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    if str(path.relative_to(PACKAGE)) in SPLIT_PENDING:
        pytest.skip("split pending")
    assert lines <= 420, f"{path.name} has {lines} lines: split it by concern"
