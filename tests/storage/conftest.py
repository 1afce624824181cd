"""One fixture that opens a pool on each storage: the journal, memory, and PostgreSQL.

A new storage joins the shared suite by adding a parameter here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harnpool import Pool, open_pool
from harnpool._journal_storage import JournalStorage
from harnpool._memory import MemoryStorage
from harnpool._pool import serve
from harnpool._settings import _Settings
from harnpool._storage import Storage

#: Opens a pool on the test's storage with these settings; call it again to reopen.
OpenOn = Callable[..., contextlib.AbstractAsyncContextManager[Pool]]


@pytest.fixture(params=["journal", "memory", "postgres"])
def open_on(request: pytest.FixtureRequest, tmp_path: Path) -> OpenOn:
    make: Callable[[], Storage]
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        name: str = request.getfixturevalue("pool_name")

        def open_shared(**settings: Any) -> contextlib.AbstractAsyncContextManager[Pool]:
            settings.setdefault("max_concurrent", 1)
            return open_pool(url, name=name, **settings)

        return open_shared
    if request.param == "journal":
        path = str(tmp_path / "pool.jsonl")

        def make() -> Storage:
            return JournalStorage(path)  # a new object on the same file: a reopen
    else:
        memory = MemoryStorage()

        def make() -> Storage:
            return memory  # the same data, owned by one pool at a time

    def opener(**settings: Any) -> contextlib.AbstractAsyncContextManager[Pool]:
        settings.setdefault("max_concurrent", 1)
        return serve(make(), _Settings(**settings))

    return opener


def only_exclusive(open_on: OpenOn, reason: str) -> None:
    """Skip a test of a storage owned by one pool at a time on a shared one."""
    if getattr(open_on, "__name__", "") == "open_shared":
        pytest.skip(f"PostgreSQL pools are shared by many processes: {reason}")
