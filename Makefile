# Thin targets; each one creates the virtualenv when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo test lint typecheck pytest bench stress clean

help:  ## List the targets.
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install harnpool with its dev extras.

demo: $(STAMP)  ## Run the crash-and-resume demo: submit, SIGKILL, reopen, resume.
	$(BIN)/python examples/01_crash_resume.py

lint: $(STAMP)  ## ruff: lint and formatting.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)  ## mypy --strict over the package, tests, examples and benchmarks.
	$(BIN)/mypy

pytest: $(STAMP)  ## The test suite alone: everything under asyncio, then the async tests under trio.
	$(BIN)/pytest -q
	$(BIN)/pytest -q --backend trio

test: lint typecheck pytest  ## Lint, type-check and test: what CI runs.

bench: $(STAMP)  ## Run every benchmark; tables print, JSON goes to benchmarks/results/.
	$(BIN)/python benchmarks/run_all.py

stress: $(STAMP)  ## The long crash and fuzz runs.
	$(BIN)/pytest -q -m slow --run-slow

clean:  ## Remove the virtualenv and caches.
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
