"""Shared fixtures, the ``--run-slow`` switch for the long runs, and ``--backend``.

Async tests run under asyncio through pytest-asyncio by default; ``--backend trio``
runs the same async tests under trio through anyio's pytest plugin (the sync tests
do not depend on the event loop and are deselected there).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
import structlog

if TYPE_CHECKING:
    from tests.postgres_server import Server


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="run the long tests marked slow (make stress)",
    )
    parser.addoption(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="the event loop for async tests (trio runs only the async tests)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: Any) -> None:
    # Mark every async test for its runner before pytest-asyncio (strict mode) looks.
    if inspect.iscoroutinefunction(obj) and name.startswith("test"):
        if collector.config.getoption("--backend") == "trio":
            pytest.mark.anyio(obj)
        else:
            pytest.mark.asyncio(obj)


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The backend anyio's plugin runs async tests on, under ``--backend trio``."""
    backend: str = request.config.getoption("--backend")
    return backend


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--backend") == "trio":
        keep = [i for i in items if isinstance(i, pytest.Function) and _is_async(i)]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long run: use make stress (pytest --run-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _is_async(item: pytest.Function) -> bool:
    return inspect.iscoroutinefunction(item.obj) and "asyncio_only" not in item.keywords


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


def _unavailable(reason: str) -> NoReturn:
    """Skip for a missing PostgreSQL locally; under CI a missing server fails the tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Server]:
    """A throwaway PostgreSQL server for the session (see tests/postgres_server.py)."""
    try:
        from tests.postgres_server import ServerUnavailable, running_server
    except ImportError as exc:
        _unavailable(f"psycopg is not installed ({exc.name}): install the postgres extra")
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_server())
        except ServerUnavailable as exc:
            _unavailable(str(exc))
        yield server


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: Server) -> str:
    """A DSN to one database shared by the session's tests; each test takes its own pool name.

    A pool name costs nothing, and every statement is scoped by it; a database
    costs 0.1-0.2 s to create, so only tests of the schema itself take one
    (``make_postgres_database``).
    """
    return postgres_server.create_database()


@pytest.fixture(scope="session")
def postgres_url(postgres_dsn: str) -> str:
    """``postgres_dsn`` as a ``postgresql://`` URI: what ``open_pool`` takes for a database."""
    from tests.postgres_server import as_url

    return as_url(postgres_dsn)


@pytest.fixture
def pool_name() -> str:
    """A pool name no other test uses."""
    return f"pool-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_postgres_database(postgres_server: Server) -> Iterator[Callable[[], str]]:
    """Return a factory of empty databases (DSNs), dropped when the test ends."""
    made: list[str] = []

    def make() -> str:
        dsn = postgres_server.create_database()
        made.append(dsn)
        return dsn

    yield make
    for dsn in made:
        postgres_server.drop_database(dsn)


@pytest.fixture
def token() -> Iterator[str]:
    """A prefix for this test's entries in ``tests.task_state.state``, removed after it."""
    from tests.task_state import state

    token = uuid.uuid4().hex
    yield token
    for key in [k for k in state if k.startswith(token)]:
        del state[key]
