"""The seam between the pool and where its tasks live: the Protocol every storage implements.

The pool keeps every task it knows in memory (:mod:`._transitions`) and hands
each new record to its storage; a storage owns the data across processes and
restarts. The JSONL journal (:class:`._journal_storage.JournalStorage`) and the
in-memory storage for tests (:class:`._memory.MemoryStorage`) implement it; the
pool and its workers never name either (``open_pool`` only builds a
JournalStorage and hands it to ``serve``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ._errors import JournalWriteError
from ._journal import TornTail
from ._records import TaskRecord

__all__ = ["ALL_ON_FULL", "ALL_STRATEGIES", "Durable", "Found", "Storage"]

#: Every ready-queue strategy and on_full policy the pool knows.
ALL_STRATEGIES = frozenset({"priority", "fifo", "lifo", "fair"})
ALL_ON_FULL = frozenset({"block", "reject", "drop_oldest", "drop_newest"})


@dataclass(slots=True)
class Found:
    """What a storage found when it was opened, after its own recovery."""

    #: The storage's name for messages and events (the journal's path as given).
    path: str
    #: True if nothing was there: the storage was created empty.
    created: bool
    #: The highest submission number ever given; new tasks count on from it.
    counter: int
    #: Every task kept, in submission order; tasks that were ``running`` are ``queued``
    #: again, their ``recoveries`` one higher.
    tasks: list[TaskRecord]
    #: Ids of the tasks that were found ``running``: their process died.
    interrupted: list[str] = field(default_factory=list)
    #: How many finished tasks retention dropped.
    dropped: int = 0
    #: The incomplete last line a crash left; None where the storage has no such thing.
    torn_tail: TornTail | None = None


class Durable(Protocol):
    """A handle on records handed to a storage: they are durable once :meth:`wait` returns.

    ``on_durable`` callbacks run in order on the event loop, once, when the
    records are durable, and never if storing them fails.
    """

    durable: bool
    on_durable: list[Callable[[], object]]

    async def wait(self) -> None:
        """Return once the records are durable.

        Raises:
            JournalWriteError: Storing them failed; the storage has stopped.
            PoolClosedError: The storage stopped before storing them.
        """


class Storage(Protocol):
    """Where a pool's tasks live: exactly what the pool asks of any storage.

    Life cycle, all on the pool's event loop: :meth:`open` (take ownership of
    the data, by a lock or a lease, load it and recover what a dead process
    left ``running``), then :meth:`run` in the pool's task group while the pool
    is open, :meth:`append` for every new record and every status change,
    :meth:`flush` and :meth:`stop` on the way out, and :meth:`aclose` (give
    ownership back) last, also when the pool failed to start after opening.
    Blocking work (file or database I/O) runs off the event loop, in a worker
    thread or the storage's own; :meth:`append` does none.

    Durability contract: :meth:`append` never blocks and never waits; it
    returns the :class:`Durable` batch the record rides in (a storage commits
    records in groups). Nobody is told of a record before its batch is
    durable, and batches become durable in the order they were appended. If
    ``append`` raises, nothing was stored and the pool's memory is unchanged.
    Once storing fails, :attr:`error` is set, every pending and later batch
    fails with it, and ``on_failure`` is called once.

    What the pool keeps to itself: the tasks in memory with their indexes and
    counts, key deduplication, the ready queue and its strategies, the queue
    bound (``max_queued``, ``on_full``), retries and their timing, waiting. A
    storage shared by several processes (PostgreSQL) cannot offer all of it:
    it says what it supports in :attr:`strategies` and :attr:`on_full`, and the
    pool refuses any other setting with a ValueError before opening.
    """

    @property
    def path(self) -> str:
        """The storage's name for messages and events (a journal's path as given)."""

    @property
    def strategies(self) -> frozenset[str]:
        """The ready-queue strategies this storage supports (see ``ALL_STRATEGIES``)."""

    @property
    def on_full(self) -> frozenset[str]:
        """The ``on_full`` policies this storage supports (see ``ALL_ON_FULL``)."""

    @property
    def error(self) -> JournalWriteError | None:
        """The failure that stopped the storage, or None."""

    @property
    def flushes(self) -> int:
        """How many group commits have completed (``PoolStatistics.flushes``)."""

    @property
    def compactions(self) -> int:
        """How often the storage compacted itself while open (``PoolStatistics.compactions``)."""

    #: Called once, on the event loop, when storing fails.
    on_failure: Callable[[JournalWriteError], None] | None

    async def open(
        self,
        *,
        max_concurrent: int,
        strategy: str,
        keep_finished: int | None,
        keep_finished_for: float | None,
    ) -> Found:
        """Take ownership of the data, load it and recover it.

        Raises:
            HarnpoolError: The storage cannot be opened (for the journal: see
                :func:`harnpool.open_pool`); nothing is owned afterwards.
        """

    def append(self, record: TaskRecord) -> Durable:
        """Store ``record``, the latest state of its task, with the next group commit.

        Raises:
            Exception: ``record`` cannot be stored; nothing was, and the
                pending batch is as it was.
        """

    def forget(self, task_id: str) -> None:
        """Let go of a finished task the pool dropped from memory (``keep_finished``).

        Called once the task's last record is durable. The storage may drop
        it at once or later; reopening applies retention again either way.
        """

    async def run(self) -> None:
        """Commit appended records until :meth:`stop` is called or storing fails."""

    def stop(self) -> None:
        """Let :meth:`run` return once what is pending is committed."""

    async def flush(self) -> None:
        """Wait until every record appended so far is durable.

        Raises:
            JournalWriteError: Storing failed.
        """

    async def aclose(self) -> None:
        """Give ownership of the data back, even if cancelled (the pool shields it)."""
