"""One fixture that opens a pool on each storage: the journal, and memory.

A new storage joins the shared suite by adding a parameter here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harnpool import Pool
from harnpool._journal_storage import JournalStorage
from harnpool._memory import MemoryStorage
from harnpool._pool import serve
from harnpool._settings import _Settings
from harnpool._storage import Storage

#: Opens a pool on the test's storage with these settings; call it again to reopen.
OpenOn = Callable[..., contextlib.AbstractAsyncContextManager[Pool]]


@pytest.fixture(params=["journal", "memory"])
def open_on(request: pytest.FixtureRequest, tmp_path: Path) -> OpenOn:
    make: Callable[[], Storage]
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
