# Thin targets; each one creates the virtualenv when it is missing, and reinstalls
# it from the lock file whenever requirements.lock or pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# uv resolves and installs; it lives beside the venv's packages, pinned like them.
UV_VERSION := 0.13.9
UV := $(VENV)/tools/bin/uv
UV_ENV := PYTHONPATH=$(VENV)/tools

.DEFAULT_GOAL := help
.PHONY: help install lock demo test lint typecheck pytest bench soak stress clean

help:  ## List the targets.
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --target $(VENV)/tools uv==$(UV_VERSION)

$(STAMP): $(LOCK) pyproject.toml | $(UV)
	$(UV_ENV) $(UV) pip sync --quiet --python $(BIN)/python --require-hashes $(LOCK)
	$(UV_ENV) $(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install harnpool with the exact versions in requirements.lock.

lock: | $(UV)  ## Re-resolve requirements.lock from pyproject.toml's ranges (newest allowed versions).
	$(UV_ENV) $(UV) pip compile --quiet --upgrade --universal --python-version 3.11 \
		--generate-hashes --extra dev --extra bench --extra postgres --extra cron -o $(LOCK) pyproject.toml

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

soak: $(STAMP)  ## A million tasks through one open pool: RSS and journal size every 100k.
	$(BIN)/python benchmarks/soak.py

stress: $(STAMP)  ## The long crash and fuzz runs.
	$(BIN)/pytest -q -m slow --run-slow

clean:  ## Remove the virtualenv and caches.
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
