"""Shared fixtures and the ``--run-slow`` switch for the long crash and fuzz runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="run the long tests marked slow (make stress)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long run: use make stress (pytest --run-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _unconfigured_structlog() -> Iterator[None]:
    """Every test starts with structlog unconfigured, as an application that never set it up.

    ``capture_logs`` leaves structlog marked as configured, after which the
    pool's events would print to stdout in later tests.
    """
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    """A journal path in a fresh directory; the file does not exist yet."""
    return tmp_path / "pool.jsonl"


@pytest.fixture
def make_journal(tmp_path: Path) -> Callable[[str], Path]:
    """Return a factory that gives a fresh journal path per name."""

    def make(name: str = "pool") -> Path:
        return tmp_path / f"{name}.jsonl"

    return make
