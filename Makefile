# One source of truth for checks: CI (.ci/run) and people run the same targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Every extra, so the README's commands, the demo and the whole suite work.
EXTRAS ?= all,test
# The floors venv: every runtime dependency at its declared floor (pyproject.toml).
FLOORS := .venv-floors
FLOORS_STAMP := $(FLOORS)/.installed
# The suite's fast part: no browser, no soak, no reliability or benchmark runs.
FAST_TESTS := tests --ignore=tests/reliability --ignore=tests/test_bench.py \
	-m "not browser and not slow" -p no:cacheprovider

.PHONY: help install check lint typecheck test test-floors docs demo bench soak clean browser promtool

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

$(FLOORS_STAMP): pyproject.toml scripts/constraints-from-floors $(STAMP)
	test -x $(FLOORS)/bin/python || $(PYTHON) -m venv $(FLOORS)
	$(BIN)/python scripts/constraints-from-floors > $(FLOORS)/constraints.txt
	$(FLOORS)/bin/python -m pip install -q --upgrade pip
	$(FLOORS)/bin/python -m pip install -q -c $(FLOORS)/constraints.txt -e '.[$(EXTRAS)]'
	touch $(FLOORS_STAMP)

install: $(STAMP)  ## create .venv and install the package with every extra (all, test, docs)

lint: $(STAMP)  ## ruff check and ruff format --check
	$(BIN)/ruff check sse_batcher tests demo bench
	$(BIN)/ruff format --check sse_batcher tests demo bench

typecheck: $(STAMP)  ## mypy --strict on the package
	$(BIN)/mypy --strict sse_batcher

check: lint typecheck  ## lint and type checks, no tests

browser:  ## install Debian chromium for the browser tests when missing
	@command -v chromium >/dev/null 2>&1 || scripts/install-chromium

promtool:  ## install Debian's prometheus (promtool) for the metrics test when missing
	@command -v promtool >/dev/null 2>&1 || scripts/install-promtool

docs: $(STAMP)  ## build docs/ into site/ with mkdocs --strict (broken links fail)
	@# not --quiet: it hides the warnings that --strict counts
	$(BIN)/mkdocs build --strict --site-dir site

test: check browser promtool docs  ## lint, type checks, the docs build, the whole suite, the floors job
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-floors

test-floors: $(FLOORS_STAMP)  ## the fast tests with every dependency at its declared floor
	$(FLOORS)/bin/python scripts/constraints-from-floors --check
	$(FLOORS)/bin/python -m pytest $(FAST_TESTS) $(PYTEST_ARGS)

demo: $(STAMP)  ## run the demo server with simulated workers on the embedded SQLite journal
	$(BIN)/sse-batcher demo $(DEMO_ARGS)

bench: $(STAMP)  ## run the benchmarks (QUICK=1: the one-minute subset; PEERS=1: also nginx+nchan and better-sse)
	$(if $(PEERS),bench/peers/install)
	$(BIN)/python -m bench$(if $(QUICK), --quick)$(if $(PEERS), --peers)

soak: $(STAMP)  ## ten-minute mixed load with periodic kills
	$(BIN)/python -m pytest tests/reliability -m slow --run-slow $(PYTEST_ARGS)

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) $(FLOORS) .mypy_cache .ruff_cache .pytest_cache .hypothesis site
