"""The JSONL journal as a :class:`._storage.Storage`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from ._errors import JournalWriteError
from ._journal import Batch, Journal, open_journal
from ._records import TaskRecord
from ._storage import ALL_ON_FULL, ALL_STRATEGIES, Found

__all__ = ["JournalStorage"]


class JournalStorage:
    """A pool's tasks in a JSONL journal file, locked by one process at a time.

    See :mod:`._journal` for the durability contract: one write and one
    fdatasync per group commit, on the journal's own writer thread. Supports
    every strategy and ``on_full`` policy. Once opened, the hot calls
    (``append``, ``run``, ``flush``, ``stop``, ``forget``) are the :class:`Journal`'s own
    bound methods, so the seam adds no call per record.

    Args:
        path: The journal file.
        gather: Let the tasks woken before a flush append to it first (see
            :class:`Journal`): for a pool that starts tasks eagerly.
    """

    strategies = ALL_STRATEGIES
    on_full = ALL_ON_FULL

    # Bound to the open journal's methods by open().
    append: Callable[[TaskRecord], Batch]
    run: Callable[[], Coroutine[Any, Any, None]]
    stop: Callable[[], None]
    flush: Callable[[], Coroutine[Any, Any, None]]
    forget: Callable[[str], None]

    def __init__(self, path: str, *, gather: bool = False) -> None:
        self._path = path
        self._gather = gather
        self._journal: Journal | None = None
        self._on_failure: Callable[[JournalWriteError], None] | None = None

    @property
    def path(self) -> str:
        return self._path

    @property
    def journal(self) -> Journal:
        """The open journal."""
        assert self._journal is not None, "the journal is not open"
        return self._journal

    # Read on every submit and wait: straight from the journal, no assertion on the way.
    @property
    def error(self) -> JournalWriteError | None:
        return self._journal.error if self._journal is not None else None

    @property
    def flushes(self) -> int:
        return self._journal.flushes if self._journal is not None else 0

    @property
    def compactions(self) -> int:
        return self._journal.compactions if self._journal is not None else 0

    @property
    def on_failure(self) -> Callable[[JournalWriteError], None] | None:
        return self._on_failure

    @on_failure.setter
    def on_failure(self, callback: Callable[[JournalWriteError], None] | None) -> None:
        self._on_failure = callback
        if self._journal is not None:
            self._journal.on_failure = callback

    async def open(
        self,
        *,
        max_concurrent: int,
        strategy: str,
        keep_finished: int | None,
        keep_finished_for: float | None,
    ) -> Found:
        """Lock, replay and compact the journal, creating it if missing, in a worker thread."""
        opened = await anyio.to_thread.run_sync(
            functools.partial(
                open_journal,
                self._path,
                max_concurrent=max_concurrent,
                strategy=strategy,
                keep_finished=keep_finished,
                keep_finished_for=keep_finished_for,
            )
        )
        journal = self._journal = Journal(opened, gather=self._gather)
        journal.on_failure = self._on_failure
        self.append = journal.append
        self.run = journal.run
        self.stop = journal.stop
        self.flush = journal.flush
        self.forget = journal.forget
        return Found(
            path=opened.path,
            created=opened.created,
            counter=opened.header.submit_counter,
            tasks=opened.tasks,
            interrupted=opened.interrupted,
            dropped=opened.dropped,
            torn_tail=opened.torn,
        )

    async def aclose(self) -> None:
        """Close the file and release the lock, in a worker thread."""
        if self._journal is not None:
            await anyio.to_thread.run_sync(self._journal.close)
