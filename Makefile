# One source of truth for checks: CI (.ci/run) and people run the same targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install check lint typecheck test docs demo bench soak clean browser

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,docs]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its test and docs extras

lint: $(STAMP)  ## ruff check and ruff format --check
	$(BIN)/ruff check sse_batcher tests demo bench
	$(BIN)/ruff format --check sse_batcher tests demo bench

typecheck: $(STAMP)  ## mypy --strict on the package
	$(BIN)/mypy --strict sse_batcher

check: lint typecheck  ## lint and type checks, no tests

browser:  ## install Debian chromium for the browser tests when missing
	@command -v chromium >/dev/null 2>&1 || scripts/install-chromium

docs: $(STAMP)  ## build docs/ into site/ with mkdocs --strict (broken links fail)
	@# not --quiet: it hides the warnings that --strict counts
	$(BIN)/mkdocs build --strict --site-dir site

test: check browser docs  ## lint, type checks, the docs build and the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)  ## run the demo server with simulated workers on the embedded SQLite journal
	$(BIN)/sse-batcher demo $(DEMO_ARGS)

bench: $(STAMP)  ## run the benchmarks (QUICK=1: the one-minute subset; PEERS=1: also nginx+nchan and better-sse)
	$(if $(PEERS),bench/peers/install)
	$(BIN)/python -m bench$(if $(QUICK), --quick)$(if $(PEERS), --peers)

soak: $(STAMP)  ## ten-minute mixed load with periodic kills
	$(BIN)/python -m pytest tests/reliability -m slow --run-slow $(PYTEST_ARGS)

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis site
