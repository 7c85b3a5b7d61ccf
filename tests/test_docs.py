"""Every code block of README.md and docs/ does what the page says.

- Python blocks run, each in its own process and empty directory, with the setup
  their ``<!-- test: ... -->`` marker names (``tests/docs_runner.py``), and must
  print every ``expect`` text.
- Shell blocks name only ``make`` targets that exist, ``sse-batcher`` subcommands
  and flags that its ``--help`` lists, and modules ``python -m`` can find.
- JSON blocks parse (unless abridged with ``...``); names imported from
  ``sse_batcher`` or from the browser client are exported; ``SSE_BATCHER_*``
  variables are ones the CLI reads.
- mkdocs builds the site with ``--strict`` (broken links and anchors fail).

docs/development.md explains the markers.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .docs_blocks import ROOT, Block, blocks, doc_files

ALL_BLOCKS = [block for path in doc_files() for block in blocks(path)]
PYTHON = [block for block in ALL_BLOCKS if block.lang == "python"]
SHELL = [block for block in ALL_BLOCKS if block.lang in {"bash", "sh", "shell", "console"}]
# A JSON block abridged with "..." shows a shape, not a value to parse.
JSON = [block for block in ALL_BLOCKS if block.lang == "json" and "..." not in block.code]
CLIENT_JS = ROOT / "sse_batcher" / "static" / "sse-batcher.js"


def _ids(found: list[Block]) -> list[str]:
    return [block.where for block in found]


def _all_text() -> str:
    return "\n".join(path.read_text() for path in doc_files())


@pytest.mark.parametrize("block", PYTHON, ids=_ids(PYTHON))
def test_python_block_runs(block: Block) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "tests.docs_runner", block.where],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, f"{block.where}\n{result.stdout}\n{result.stderr}"


# -- shell ------------------------------------------------------------------------------


def _commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: pipelines and lists split, comments gone."""
    commands: list[list[str]] = []
    pending = ""
    for line in code.replace("\\\n", " ").splitlines():
        pending += line
        lexer = shlex.shlex(pending, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # a quoted argument goes on over the next line
            pending += "\n"
            continue
        pending = ""
        current: list[str] = []
        for token in tokens:
            if token in {"|", "||", "&&", ";", "&"}:
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    assert not pending, f"a quote is never closed in {pending!r}"
    result = []
    for command in commands:
        while command and (command[0] == "export" or re.match(r"^\w+=", command[0])):
            command = command[1:]
        if command:
            result.append(command)
    return result


@functools.cache
def _make_targets() -> frozenset[str]:
    return frozenset(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), re.M))


@functools.cache
def _cli_help(*subcommand: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "sse_batcher", *subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def _cli_subcommands() -> set[str]:
    # "  serve     run the service ...": a lower-case name, two spaces, its help
    return set(re.findall(r"^[ ]+([a-z][\w-]*)[ ]{2,}\S", _cli_help(), re.M))


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _check_command(command: list[str], where: str) -> None:
    if command[0] == "make":
        targets = [arg for arg in command[1:] if not arg.startswith("-") and "=" not in arg]
        assert set(targets) <= _make_targets(), f"{where}: no make target {targets}"
        return
    if command[0] == "sse-batcher":
        args = command[1:]
    elif command[0].endswith("python") and command[1:3] == ["-m", "sse_batcher"]:
        args = command[3:]
    elif command[0].endswith("python") and command[1:2] == ["-m"]:
        assert _module_exists(command[2]), f"{where}: no module {command[2]}"
        return
    else:
        return  # curl, redis-server, tail ...: not ours to check
    subcommand = args[0]
    assert subcommand in _cli_subcommands(), f"{where}: no subcommand {subcommand}"
    help_text = _cli_help(subcommand)
    for arg in args[1:]:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            assert re.search(rf"{re.escape(flag)}\b", help_text), f"{where}: {flag} unknown"


@pytest.mark.parametrize("block", SHELL, ids=_ids(SHELL))
def test_shell_block_names_real_commands(block: Block) -> None:
    commands = _commands(block.code)
    assert commands, f"{block.where}: an empty shell block"
    for command in commands:
        _check_command(command, block.where)


def test_every_make_target_named_in_the_text_exists() -> None:
    named = set(re.findall(r"`make (\w+)", _all_text()))
    assert named <= _make_targets(), named - _make_targets()


def test_every_environment_variable_named_is_read_by_the_cli() -> None:
    helps = "".join(_cli_help(name) for name in sorted(_cli_subcommands()))
    named = set(re.findall(r"\bSSE_BATCHER_[A-Z_]*[A-Z]\b", _all_text()))
    assert named, "the docs name no SSE_BATCHER_* variable"
    assert {name for name in named if name not in helps} == set()


# -- json, imports ----------------------------------------------------------------------


@pytest.mark.parametrize("block", JSON, ids=_ids(JSON))
def test_json_block_parses(block: Block) -> None:
    decoder, text, index = json.JSONDecoder(), block.code.strip(), 0
    while index < len(text):  # one value, or one value per line
        _, index = decoder.raw_decode(text, index)
        index += len(text[index:]) - len(text[index:].lstrip())


def test_every_name_imported_from_sse_batcher_is_exported() -> None:
    import sse_batcher

    names = {
        name.strip()
        for line in re.findall(r"from sse_batcher import ([\w, ]+)", _all_text())
        for name in line.split(",")
    }
    assert names, "the docs import nothing from sse_batcher"
    assert names <= set(sse_batcher.__all__), names - set(sse_batcher.__all__)


def test_every_name_imported_from_the_browser_client_is_exported() -> None:
    imports = re.findall(r"import \{([^}]*)\} from \"/static/sse-batcher\.js\"", _all_text())
    names = {name.strip() for line in imports for name in line.split(",")}
    assert names, "the docs never import the browser client"
    exported = set(
        re.findall(
            r"^export (?:async )?(?:function|const|class) (\w+)", CLIENT_JS.read_text(), re.M
        )
    )
    assert names <= exported, names - exported


# -- the site ---------------------------------------------------------------------------


def test_readme_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((docs/[\w./-]+\.md)(?:#[\w-]+)?\)", readme))
    pages = {str(path.relative_to(ROOT)) for path in (ROOT / "docs").rglob("*.md")}
    assert linked <= pages, f"README links missing pages: {linked - pages}"
    assert pages - {"docs/index.md"} <= linked, f"README does not link {pages - linked}"


def test_docs_build_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "index.html").is_file()
