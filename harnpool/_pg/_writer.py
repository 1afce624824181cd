"""Group commit on the database: one writer per process, one transaction per group.

The journal makes a batch durable with one write and one fdatasync; here a
group of changes becomes durable with one ``COMMIT``. Submits from concurrent
callers and the outcomes of finished attempts are queued; a single task takes
everything queued since its last commit and stores it with one
:meth:`PostgresStore.write <harnpool._pg.PostgresStore.write>` (one
transaction, one notification of each kind), on one connection at a time.

When a caller is told: only once the group holding its change has committed
(then its change is as durable as the server's ``synchronous_commit`` makes
it). If the transaction fails, every caller of that group gets the
:class:`~harnpool.DatabaseError`: nothing of the group is stored, nobody was
told otherwise. An outcome whose attempt is no longer this process's is
discarded on its own (its caller gets None); the rest of the group is stored.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

import anyio

from .._errors import DatabaseError, PoolClosedError
from .._records import TaskRecord
from ._store import PostgresStore, Written

__all__ = ["GroupWriter"]

_INT64: Final = range(-(2**63), 2**63)


class _Request:
    """One caller's change, and what became of it once its group committed."""

    __slots__ = ("delay", "done", "error", "outcome", "records", "stored", "submitted")

    def __init__(
        self,
        records: Sequence[TaskRecord] | None = None,
        outcome: TaskRecord | None = None,
        delay: float = 0.0,
    ) -> None:
        self.records = records
        self.outcome = outcome
        self.delay = delay
        self.done = anyio.Event()
        self.error: BaseException | None = None
        self.submitted: list[tuple[TaskRecord, bool]] = []
        self.stored: TaskRecord | None = None


class GroupWriter:
    """Takes what its callers queued and writes it to the store by groups.

    :meth:`run` is the writer: start it in the pool's task group. Callers
    (:meth:`submit`, :meth:`outcome`) queue a change and wait for the commit
    of the group that holds it.

    Attributes:
        groups: How many groups were committed.
    """

    def __init__(self, store: PostgresStore, owner: str, limiter: anyio.CapacityLimiter) -> None:
        self._store = store
        self._owner = owner
        self._limiter = limiter
        self._pending: list[_Request] = []
        self._wanted = anyio.Event()
        self._closed = False
        self.groups = 0

    async def submit(self, records: Sequence[TaskRecord]) -> list[tuple[TaskRecord, bool]]:
        """Store new tasks in the next group; what :meth:`PostgresStore.submit_marked` returns.

        Raises:
            ValueError: A record's priority does not fit in 64 bits; nothing was queued.
            DatabaseError: The group's transaction failed; nothing was stored.
            PoolClosedError: The writer has stopped; nothing was stored.
        """
        for record in records:
            if record.priority not in _INT64:
                raise ValueError(
                    f"priority must fit in a signed 64-bit integer, not {record.priority}"
                )
        if not records:
            return []
        request = await self._queue(_Request(records=records))
        return request.submitted

    async def outcome(self, record: TaskRecord, delay: float = 0.0) -> TaskRecord | None:
        """Record an attempt's outcome in the next group, guarded by owner and attempt.

        ``record`` with a final status finishes the task; with ``queued`` it is
        a retry due ``delay`` seconds from now.

        Returns:
            The stored record, or None if the attempt was no longer this
            process's: the outcome was discarded.

        Raises:
            DatabaseError: The group's transaction failed; nothing was stored.
            PoolClosedError: The writer has stopped; nothing was stored.
        """
        request = await self._queue(_Request(outcome=record, delay=delay))
        return request.stored

    async def _queue(self, request: _Request) -> _Request:
        if self._closed:
            raise PoolClosedError(f"the pool {self._store.name!r} is closed")
        self._pending.append(request)
        self._wanted.set()
        await request.done.wait()
        if request.error is not None:
            error = request.error
            if isinstance(error, DatabaseError):
                # One exception object per caller: each raises and chains its own.
                raise DatabaseError(str(error), pool=error.pool) from error
            raise error
        return request

    async def run(self) -> None:
        """Write every group queued, one transaction at a time, until cancelled."""
        try:
            while True:
                if not self._pending:
                    await self._wanted.wait()
                self._wanted = anyio.Event()
                group, self._pending = self._pending, []
                # Shielded: once a group is being written, its callers learn how it ended.
                with anyio.CancelScope(shield=True):
                    await self._write(group)
        finally:
            self._closed = True
            pending, self._pending = self._pending, []
            for request in pending:
                request.error = PoolClosedError(f"the pool {self._store.name!r} is closed")
                request.done.set()

    async def _write(self, group: list[_Request]) -> None:
        submits = [r.records for r in group if r.records is not None]
        outcomes = [(r.outcome, r.delay) for r in group if r.outcome is not None]
        try:
            written: Written = await anyio.to_thread.run_sync(
                functools.partial(
                    self._store.write, submits=submits, outcomes=outcomes, owner=self._owner
                ),
                limiter=self._limiter,
            )
        except Exception as exc:
            for request in group:
                request.error = exc
                request.done.set()
            return
        self.groups += 1
        submitted = iter(written.submitted)
        stored = iter(written.outcomes)
        for request in group:
            if request.records is not None:
                request.submitted = next(submitted)
            if request.outcome is not None:
                request.stored = next(stored)
            request.done.set()
