"""The code blocks of README.md and docs/*.md, with the test marker written above each.

A fenced block may be preceded (blank lines allowed) by an HTML comment that GitHub
and mkdocs do not render, telling ``tests/test_docs.py`` how to run it::

    <!-- test: setup=batcher expect="JOBS_BATCH_STARTED" expect="LOG_INFO" -->
    ```python
    ...
    ```

Keys (shell-quoted values): ``setup`` (``none``, ``batcher`` or ``server``, see
``tests/docs_runner.py``), ``expect`` (a text the run must print; repeatable) and
``skip`` (a reason: the block is only compiled). docs/development.md explains them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ROOT", "Block", "Marker", "blocks", "doc_files"]

ROOT = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^(?P<indent>[ ]*)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)[ ]*$")
_MARKER = re.compile(r"^[ ]*<!--[ ]*test:(?P<body>.*?)-->[ ]*$")
_SETUPS = frozenset({"none", "batcher", "server"})


@dataclass(frozen=True)
class Marker:
    """What the ``<!-- test: ... -->`` comment above a block asks for."""

    setup: str = "none"
    expect: tuple[str, ...] = ()
    skip: str | None = None

    @classmethod
    def parse(cls, body: str, where: str) -> Marker:
        setup, expect, skip = "none", [], None
        for item in shlex.split(body):
            key, sep, value = item.partition("=")
            if not sep or not value:
                raise ValueError(f"{where}: test marker item {item!r} is not key=value")
            if key == "setup":
                if value not in _SETUPS:
                    raise ValueError(f"{where}: unknown setup {value!r} (one of {sorted(_SETUPS)})")
                setup = value
            elif key == "expect":
                expect.append(value)
            elif key == "skip":
                skip = value
            else:
                raise ValueError(f"{where}: unknown test marker key {key!r}")
        return cls(setup=setup, expect=tuple(expect), skip=skip)


@dataclass(frozen=True)
class Block:
    """One fenced code block: its file, the line of its first code line, language, code."""

    path: Path
    line: int
    lang: str
    code: str
    marker: Marker = field(default_factory=Marker)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def padded(self) -> str:
        """The code behind blank lines, so tracebacks name the Markdown file's lines."""
        return "\n" * (self.line - 1) + self.code


def doc_files() -> list[Path]:
    """README.md and every page under docs/, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown file (indented fences in lists included)."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    marker: Marker | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        where = f"{path.relative_to(ROOT)}:{index + 1}"
        if match := _MARKER.match(line):
            marker = Marker.parse(match["body"], where)
        elif match := _FENCE.match(line):
            indent, fence = len(match["indent"]), match["fence"]
            end = index + 1
            while end < len(lines) and lines[end].strip() != fence:
                end += 1
            if end == len(lines):
                raise ValueError(f"{where}: code block never closed")
            code = "\n".join(text[indent:] for text in lines[index + 1 : end]) + "\n"
            found.append(Block(path, index + 2, match["lang"], code, marker or Marker()))
            marker = None
            index = end
        elif line.strip() and marker is not None:
            raise ValueError(f"{where}: a test marker must stand right above a code block")
        index += 1
    return found
