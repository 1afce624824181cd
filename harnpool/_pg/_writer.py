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
Any other failure while a group is written or handed out is a bug: every
caller of the group still learns of it, as a :class:`~harnpool.DatabaseError`
whose ``__cause__`` it is, and the writer goes on with the next group.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Final

import anyio
import psycopg

from .._errors import DatabaseError, HarnpoolError, PoolClosedError
from .._records import TaskRecord
from ._store import Claim, ClaimRequest, PostgresStore, Written

__all__ = ["GroupWriter"]

#: How many times a group is written again after the server chose it as a deadlock's victim.
_DEADLOCK_RETRIES: Final = 3


class _Request:
    """One caller's change, and what became of it once its group committed."""

    __slots__ = ("delay", "delays", "done", "error", "outcome", "records", "stored", "submitted")

    def __init__(
        self,
        records: Sequence[TaskRecord] | None = None,
        outcome: TaskRecord | None = None,
        delay: float = 0.0,
        delays: Sequence[float | None] | None = None,
    ) -> None:
        self.records = records
        self.delays = delays
        self.outcome = outcome
        self.delay = delay
        self.done = anyio.Event()
        self.error: BaseException | None = None
        self.submitted: list[tuple[TaskRecord, bool]] = []
        self.stored: TaskRecord | None = None


class _GroupEnd:
    """The end of one group: its claim, or its error, once it committed or failed."""

    __slots__ = ("claim", "done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.claim: Claim | None = None
        self.error: BaseException | None = None


class GroupWriter:
    """Takes what its callers queued and writes it to the store by groups.

    :meth:`run` is the writer: start it in the pool's task group. Callers
    (:meth:`submit`, :meth:`outcome`) queue a change and wait for the commit
    of the group that holds it.

    Attributes:
        groups: How many groups were committed.
    """

    def __init__(
        self,
        store: PostgresStore,
        owner: str,
        limiter: anyio.CapacityLimiter,
        *,
        claim_for: Callable[[], ClaimRequest | None] = lambda: None,
        claimed: Callable[[Claim], None] = lambda claim: None,
    ) -> None:
        """Args:
        store: Where the groups go.
        owner: Who runs the attempts whose outcomes are recorded, and claims.
        limiter: The threads the store's calls run in.
        claim_for: Called as each group is formed: the claim it should make
            (the slots free once its outcomes are written), or None.
        claimed: Called with what a group claimed, before its callers are told.
        """
        self._store = store
        self._owner = owner
        self._limiter = limiter
        self._claim_for = claim_for
        self._claimed = claimed
        self._pending: list[_Request] = []
        self._wanted = anyio.Event()
        self._claim_wanted = False
        self._next = _GroupEnd()
        self._writing: _GroupEnd | None = None
        self._closed = False
        self.groups = 0

    async def claim(self) -> Claim | None:
        """Have the next group claim what ``claim_for`` asks for, and wait for it.

        Returns:
            What it claimed, or None if ``claim_for`` asked for nothing then.

        Raises:
            DatabaseError: The group's transaction failed; nothing was claimed.
            PoolClosedError: The writer has stopped.
        """
        if self._closed:
            raise PoolClosedError(f"the pool {self._store.name!r} is closed")
        end = self._next
        self._claim_wanted = True
        self._wanted.set()
        await end.done.wait()
        if end.error is not None:
            raise _own(end.error)
        return end.claim

    async def settle(self) -> None:
        """Wait for the group being written, if any, to end."""
        writing = self._writing
        if writing is not None:
            await writing.done.wait()

    async def submit(
        self, records: Sequence[TaskRecord], delays: Sequence[float | None] | None = None
    ) -> list[tuple[TaskRecord, bool]]:
        """Store new tasks in the next group; what :meth:`PostgresStore.submit_marked` returns.

        ``delays`` is as :meth:`PostgresStore.submit` takes it.

        Raises:
            DatabaseError: The group's transaction failed; nothing was stored.
            PoolClosedError: The writer has stopped; nothing was stored.
        """
        if not records:
            return []
        if delays is None:
            delays = [None] * len(records)
        request = await self._queue(_Request(records=records, delays=delays))
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
            raise _own(request.error)
        return request

    async def run(self) -> None:
        """Write every group queued, one transaction at a time, until cancelled."""
        try:
            while True:
                if not self._pending and not self._claim_wanted:
                    await self._wanted.wait()
                self._wanted = anyio.Event()
                group, self._pending = self._pending, []
                self._claim_wanted = False
                end, self._next = self._next, _GroupEnd()
                self._writing = end
                # Shielded: once a group is being written, its callers learn how it ended.
                with anyio.CancelScope(shield=True):
                    await self._write(group, end)
                self._writing = None
        finally:
            self._closed = True
            closed = PoolClosedError(f"the pool {self._store.name!r} is closed")
            pending, self._pending = self._pending, []
            for request in pending:
                request.error = closed
                request.done.set()
            for ending in (self._writing, self._next):
                if ending is not None and not ending.done.is_set():
                    ending.error = closed
                    ending.done.set()

    async def _write(self, group: list[_Request], end: _GroupEnd) -> None:
        """Write ``group`` and tell its callers how it ended, whatever happens."""
        committed = False
        try:
            written = await self._commit(group)
            committed = True
            if written is not None:
                self._record(group, end, written)
        except BaseException as exc:
            self._fail(group, end, self._error(exc, committed=committed))
            # An Exception is a bug: its callers were told, and the writer goes on
            # rather than taking the pool's task group down with it.
            if not isinstance(exc, Exception):
                raise
            return
        for request in group:
            request.done.set()
        end.done.set()

    async def _commit(self, group: list[_Request]) -> Written | None:
        submits = [r.records for r in group if r.records is not None]
        delays = [
            [None] * len(r.records) if r.delays is None else r.delays
            for r in group
            if r.records is not None
        ]
        outcomes = [(r.outcome, r.delay) for r in group if r.outcome is not None]
        claim = self._claim_for()
        if not group and claim is None:
            return None
        write = functools.partial(
            self._store.write,
            submits=submits,
            submit_delays=delays,
            outcomes=outcomes,
            owner=self._owner,
            claim=claim,
        )
        for retry in range(_DEADLOCK_RETRIES + 1):
            try:
                return await anyio.to_thread.run_sync(write, limiter=self._limiter)
            except DatabaseError as exc:
                # The server rolled the victim back whole: writing it again is safe.
                if retry < _DEADLOCK_RETRIES and isinstance(
                    exc.__cause__, psycopg.errors.DeadlockDetected
                ):
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _record(self, group: list[_Request], end: _GroupEnd, written: Written) -> None:
        """Hand each caller its part of a committed group; the claim to ``claimed``."""
        self.groups += 1
        if written.claim is not None:
            end.claim = written.claim
            self._claimed(written.claim)
        submitted = iter(written.submitted)
        stored = iter(written.outcomes)
        for request in group:
            if request.records is not None:
                request.submitted = next(submitted)
            if request.outcome is not None:
                request.stored = next(stored)

    def _error(self, exc: BaseException, *, committed: bool) -> BaseException:
        """What the callers of a group that ``exc`` ended get: a harnpool error."""
        name = self._store.name
        if not isinstance(exc, Exception):
            return PoolClosedError(f"the pool {name!r} is closed")
        if isinstance(exc, HarnpoolError):
            return exc
        if committed:
            message = (
                f"pool {name!r}: a group was committed but handing out what it "
                f"stored failed: {type(exc).__name__}: {exc}"
            )
        else:
            message = f"pool {name!r}: writing a group failed: {type(exc).__name__}: {exc}"
        error = DatabaseError(message, pool=name)
        error.__cause__ = exc
        return error

    @staticmethod
    def _fail(group: list[_Request], end: _GroupEnd, exc: BaseException) -> None:
        for request in group:
            request.error = exc
            request.done.set()
        end.error = exc
        end.done.set()


def _own(error: BaseException) -> BaseException:
    """The exception one caller raises: its own object, chained to the group's."""
    if isinstance(error, DatabaseError):
        own = DatabaseError(str(error), pool=error.pool)
        own.__cause__ = error
        return own
    return error
