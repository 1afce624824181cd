"""The pool on a PostgreSQL database: one pool shared by many processes and hosts.

Where the journal's pool keeps every task in memory and appends each change to
its log, a shared pool keeps nothing but what this process is running: every
task lives in the database (:class:`._pg.PostgresStore`). Its changes go to
the database by group commit, as the journal's go to its file: one writer per
process (:class:`._pg._writer.GroupWriter`) takes every submit, outcome and
claim queued since its last transaction into the next one, and nobody is told
of a change before its transaction committed.

* Submitting stores the tasks in the writer's next group; the database numbers
  them and deduplicates keys across every caller and every process of the pool.
* Each group also claims queued tasks for this process's free workers (a
  worker is free once its attempt's outcome is queued), under the pool's limit
  across every process, and runs each with the journal pool's attempt logic
  (:class:`._worker.Workers`: timeouts, thread slots, cancellation rules,
  result encoding); its outcome, and the retry policy's decision, is then
  written guarded by owner and attempt. A claimer asks for a group of its own
  when it learns of work no group claimed: a notification, a retry coming due,
  the poll.
* A renewer extends the leases of the running tasks every ``lease / 3``
  seconds in one statement. A task whose lease another process reclaimed, or
  every task once renewing has failed for ``lease`` seconds, is stopped here
  and its outcome discarded.
* A listener thread receives other processes' notifications: a queued task,
  or a freed slot while the pool is at its limit, wakes the claimer, a
  finished task wakes its waiters, a cancel reaches the task's owner.
  Notifications are hints: waiters and the claimer also poll about once a
  second, and at once after a lost connection.

Blocking database calls run in threads (``anyio.to_thread``), never on the
event loop, except the synchronous reads :meth:`SharedPool.info`,
:meth:`SharedPool.tasks` and :meth:`SharedPool.statistics`, which run one
query on a connection of their own.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import math
import os
import random
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, overload

import anyio
import anyio.abc
import msgspec

from ._cache import WeakCache
from ._completion import AsCompleted, Inbox
from ._errors import DatabaseError, PoolClosedError, UnknownTaskError, WaitTimeout
from ._events import emit
from ._info import PoolStatistics, RecoveryReport, TaskInfo
from ._loop import threadsafe_caller
from ._pg import RECONNECTED, Claim, ClaimRequest, Listener, PostgresStore
from ._pg._writer import GroupWriter
from ._pool import Pool
from ._records import FINISHED, Status, TaskRecord
from ._registry import decode_call, encode_args, registered_name, resolve, unwrap
from ._results import decode_outcome, error_message, storable
from ._retry import backoff, retryable
from ._schedule import Schedules
from ._settings import (
    _retry_names,
    _Settings,
    _SharedSettings,
    _type_name,
    check_task_id,
    check_task_ids,
    check_wait_timeout,
)
from ._task import Job, Task, TaskFunction, TaskId, function_name
from ._threads import check_loop_thread, thread_slots
from ._transitions import Tasks
from ._worker import Workers

__all__ = ["SharedPool", "serve_shared", "stored_name"]

T = TypeVar("T")
R = TypeVar("R")

#: Seconds between polls of the database when no notification came.
POLL = 1.0
#: How many records of tasks finished here are kept for ``wait`` (finished rows never change).
_KEEP_DONE = 4096


def _refuse(fn: object, why: str) -> TypeError:
    return TypeError(
        f"fn {function_name(fn)!r} cannot run in a pool shared through PostgreSQL: {why}; "
        "another process must find the function by name: use a module-level function, "
        "or register one with harnpool.task"
    )


def _stored_name(fn: object) -> str:
    name = registered_name(fn)
    if name is not None:
        return name
    if inspect.ismethod(fn):
        raise _refuse(fn, "a bound method's object exists only in this process")
    if not (inspect.isfunction(fn) or inspect.isbuiltin(fn)):
        raise _refuse(fn, f"a {type(fn).__qualname__} object exists only in this process")
    qualname: str = fn.__qualname__
    if "<lambda>" in qualname:
        raise _refuse(fn, "a lambda has no name to find it by")
    if "<locals>" in qualname:
        raise _refuse(
            fn, "a function defined inside another function (a closure) cannot be imported"
        )
    name = f"{fn.__module__}:{qualname}"
    if resolve(name) is not fn:
        raise _refuse(fn, f"importing {name!r} does not give this function")
    return name


#: The name another process finds ``fn`` by: its registered name, else ``module:qualname``.
stored_name = WeakCache[object, str](_stored_name)


class _Claimed(Task):
    """A task this process claimed: its attempt, and how the attempt ended."""

    __slots__ = ("delay", "lost", "outcome")

    def __init__(self, record: TaskRecord) -> None:
        super().__init__(record, None, ())
        #: The record to write once the attempt has ended (None while it runs).
        self.outcome: TaskRecord | None = None
        #: Seconds until a retry, when ``outcome`` queues the task again.
        self.delay = 0.0
        #: Whether this process lost the task's lease: its outcome is discarded.
        self.lost = False


class _Outcomes(Tasks):
    """Where the workers' attempt logic reports how an attempt ended.

    The journal's :class:`Tasks` changes memory and appends the record; here
    the record is only kept on the task, and the pool writes it to the
    database, guarded by owner and attempt, once the attempt is over.
    """

    def __init__(self, settings: _Settings, path: str) -> None:  # no tasks in memory
        self.settings = settings
        self.path = path
        self.random = random.Random()

    def finish(self, task: Task, record: TaskRecord) -> None:
        assert isinstance(task, _Claimed)
        task.outcome = record

    def end(self, task: Task, status: Status, *, reason: str) -> None:
        assert isinstance(task, _Claimed)
        task.outcome = msgspec.structs.replace(task.record, status=status, reason=reason)

    def failed_attempt(self, task: Task, exc: BaseException, now: float) -> None:
        assert isinstance(task, _Claimed)
        record = task.record
        error = {
            "error_type": storable(_type_name(type(exc))),
            "error_message": error_message(exc),
        }
        # Runs a lost lease interrupted are not failures: they do not use up retries.
        failures = record.attempts - record.recoveries
        if failures <= record.retries and retryable(record, exc):
            settings = self.settings
            task.delay = backoff(
                failures, settings.retry_backoff, settings.retry_backoff_max, self.random
            )
            task.outcome = msgspec.structs.replace(record, status=Status.QUEUED, **error)
        else:
            task.exc = exc
            task.outcome = msgspec.structs.replace(record, status=Status.FAILED, **error)


class _Runner(Workers):
    """The journal pool's attempt logic (``_attempt``), on tasks this process claimed."""

    def __init__(self, outcomes: _Outcomes, workers: int) -> None:  # claims, not a ready queue
        self.tasks = outcomes
        self.settings = outcomes.settings
        self.path = outcomes.path
        self.scope = anyio.CancelScope()
        self.threads = anyio.CapacityLimiter(thread_slots(workers))
        self._thread_limiter = anyio.CapacityLimiter(thread_slots(workers))
        self._call_soon = None
        self._encoder = msgspec.json.Encoder()
        self.count = workers
        self._busy = 0

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._call_soon = threadsafe_caller()


class _Waiter:
    __slots__ = ("count", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.count = 0


class SharedPool(Pool):
    """A :class:`Pool` whose tasks live in a PostgreSQL database; see :func:`harnpool.open_pool`."""

    def __init__(
        self,
        store: PostgresStore,
        reader: PostgresStore,
        listener: Listener,
        settings: _Settings,
        shared: _SharedSettings,
        connections: int,
    ) -> None:  # the journal's pool state is not used: every task lives in the database
        self._store = store
        self._reader = reader
        self._listener = listener
        self._settings = settings
        self._shared = shared
        self._name = shared.name
        self._loop_thread = threading.get_ident()
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._limiter = anyio.CapacityLimiter(connections)
        #: Submits, outcomes and claims, stored by group commit.
        self._writer = GroupWriter(
            store,
            self._owner,
            self._limiter,
            claim_for=self._claim_request,
            claimed=self._claimed,
        )
        #: Where claimed tasks run, while the claimer runs.
        self._task_group: anyio.abc.TaskGroup | None = None
        self._listen_limiter = anyio.CapacityLimiter(1)
        self._outcomes = _Outcomes(settings, shared.name)
        self._runner = _Runner(self._outcomes, shared.workers)
        #: Tasks whose attempt runs here, by id.
        self._running: dict[str, _Claimed] = {}
        #: Tasks a cancel() here waits for: a group that claimed one before the
        #: request committed may not have started it yet (its own notification
        #: is dropped, and the next renewal is up to a third of a lease away).
        self._cancelling: set[str] = set()
        #: Claimed tasks not yet written back: attempts running or outcomes being written.
        self._busy = 0
        self._claim_wanted = anyio.Event()
        self._claiming = shared.workers > 0
        #: Whether the last claim found the pool at its limit: only then does a
        #: task finished elsewhere wake the claimer (not every process at every finish).
        self._at_limit = False
        self._waiters: dict[str, _Waiter] = {}
        #: The ``as_completed`` iterators told when the task of that id may have finished.
        self._watchers: dict[str, list[Inbox]] = {}
        #: Unfinished tasks submitted here: leaving the block waits for them.
        self._submitted: set[str] = set()
        self._functions: dict[str, TaskFunction | None] = {}
        #: The latest records of tasks finished here, oldest first: wait() needs no query.
        self._done: dict[str, TaskRecord] = {}
        #: The pool's default ``retry_on``, as stored.
        self._retry_on = _retry_names(settings.retry_on)
        self._work_done = anyio.Event()
        self._closed = False
        self._schedules = Schedules(shared.name, self._keys_with, self.submit_many)
        self.recovery = RecoveryReport(
            path=shared.name,
            created=True,
            tasks=0,
            requeued=(),
            queued=0,
            finished=0,
            resumed=(),
            unresolved=(),
            dropped_finished=0,
            torn_tail=None,
        )

    @property
    def path(self) -> str:
        """The pool's name within its database."""
        return self._name

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<Pool {self._name!r} on PostgreSQL {state} "
            f"max_concurrent={self._settings.max_concurrent} workers={self._shared.workers} "
            f"running_here={len(self._running)}>"
        )

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self._limiter
        )

    async def _call_again(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``_call`` for a call that is safe to repeat: a read, or a write guarded
        by owner and attempt; see :meth:`_again`.

        Raises:
            DatabaseError: The database still failed after a lease.
        """
        return await self._again(functools.partial(self._call, fn, *args, **kwargs))

    async def _again(self, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call()``, tried again with backoff for up to one lease while it
        raises DatabaseError: a restarted server closed every pooled connection,
        and each fails once before a fresh one replaces it.

        Raises:
            DatabaseError: The database still failed after a lease.
        """
        deadline = anyio.current_time() + self._shared.lease
        delay = 0.01
        while True:
            try:
                return await call()
            except DatabaseError:
                if anyio.current_time() + delay > deadline:
                    raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _check_usable(self) -> None:
        if self._closed:
            raise PoolClosedError(f"the pool {self._name!r} is closed")

    def _resolve(self, name: str | None) -> TaskFunction | None:
        if name is None:
            return None
        try:
            return self._functions[name]
        except KeyError:
            fn = self._functions[name] = resolve(name)
            return fn

    # -- submitting -------------------------------------------------------------------

    def _prepare(self, job: Job) -> TaskRecord:
        """Check a job and build its record; refuse a function no other process can find."""
        fn = job.fn
        # A partial is stored as the function it wraps, with the arguments it binds.
        call = unwrap(fn, job.args)
        name = stored_name(call.fn)
        settings = self._settings
        retry_on = job.retry_on
        return TaskRecord(
            id="",
            seq=0,
            status=Status.QUEUED,
            submitted_at=0.0,
            priority=job.priority,
            key=job.key,
            function=function_name(fn),
            name=name,
            args=encode_args(call.fn, call.args, name, call.kwargs),
            group=job.group,
            retries=settings.retries if job.retries is None else job.retries,
            retry_on=self._retry_on if retry_on is None else _retry_names(retry_on),
            timeout=settings.timeout if job.timeout is None else job.timeout,
            # Only a run_at is an absolute time; a delay is counted on the database's clock.
            not_before=job._run_at,
        )

    async def _submit_one(self, job: Job) -> str:
        return (await self.submit_many([job]))[0]

    async def submit_many(self, jobs: Iterable[Job]) -> list[str]:
        """Submit several tasks in one transaction; see :meth:`Pool.submit_many`.

        Unlike a journal pool's, these tasks run in a clean ``contextvars``
        context: a context cannot travel to the process that claims them.

        Raises:
            TypeError: What :meth:`Pool.submit_many` raises, and also for a
                function another process cannot find by name (a lambda, a
                closure, a bound method, or a partial of one): nothing was
                submitted. A partial of a function it can find is stored as
                that function, with the arguments and keywords it binds.
            DatabaseError: The database failed; nothing was submitted.
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.submit_many")
        if isinstance(jobs, Job) or not isinstance(jobs, Iterable):
            raise TypeError(f"jobs must be an iterable of Job, not {type(jobs).__qualname__}")
        jobs = list(jobs)
        for job in jobs:
            if not isinstance(job, Job):
                raise TypeError(f"jobs must hold only Job objects, not {type(job).__qualname__}")
        records = [self._prepare(job) for job in jobs]  # every check before any write
        self._check_usable()
        # The group that stores them also claims for this process's free workers.
        stored = await self._writer.submit(records, [job._delay or None for job in jobs])
        for record, new in stored:
            if record.status not in FINISHED:
                self._submitted.add(record.id)
            if new:
                emit("info", "task.submitted", pool=self._name, task_id=record.id, key=record.key)
        return [record.id for record, _ in stored]

    # -- waiting and cancelling -------------------------------------------------------

    async def _finished(self, task_id: str) -> TaskRecord:
        """The task's record once it has finished, wherever it ran."""
        done = self._done.get(task_id)
        if done is not None:
            return done
        while True:
            waiter = self._waiters.get(task_id)
            if waiter is None:
                waiter = self._waiters[task_id] = _Waiter()
            waiter.count += 1
            try:
                # Registered before reading, so a notification after the read is not missed.
                record = await self._call_again(self._store.get, task_id)
                if record.status in FINISHED:
                    return record
                await waiter.event.wait()
                self._check_usable()
            finally:
                waiter.count -= 1
                if not waiter.count and self._waiters.get(task_id) is waiter:
                    del self._waiters[task_id]

    def _wake_waiters(self, task_id: str) -> None:
        waiter = self._waiters.pop(task_id, None)
        if waiter is not None:
            waiter.event.set()
        if self._watchers:
            for inbox in self._watchers.pop(task_id, ()):
                inbox(task_id)

    @overload
    async def wait(self, task_id: TaskId[R], *, timeout: float | None = None) -> R: ...

    @overload
    async def wait(self, task_id: str, *, timeout: float | None = None) -> Any: ...

    async def wait(self, task_id: str, *, timeout: float | None = None) -> Any:
        """Wait for any task of the pool to finish, wherever it runs; see :meth:`Pool.wait`.

        The result is typed by the function's return annotation when this
        process can find the function. ``TaskFailed.__cause__`` is None: the
        exception may have been raised in another process.

        Raises:
            UnknownTaskError: The pool has no task with this id.
            DatabaseError: The database failed.
            TaskFailed, TaskCancelled, WaitTimeout, PoolClosedError: As for
                :meth:`Pool.wait`.
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.wait")
        timeout = check_wait_timeout(timeout)
        check_task_id(task_id)
        self._check_usable()
        with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
            record = await self._finished(task_id)
        if scope.cancelled_caught:
            assert timeout is not None
            raise WaitTimeout(task_id, timeout)
        return decode_outcome(record, self._resolve(record.name), None)

    def as_completed(self, ids: Iterable[str], *, timeout: float | None = None) -> AsCompleted:
        """Iterate over task ids as their tasks finish, wherever they run; see
        :meth:`Pool.as_completed`.

        Raises:
            DatabaseError: The database failed.
            The errors of :meth:`Pool.as_completed` (but never TaskNotAttached
            or WaitDeadlock).
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.as_completed")
        checked = check_task_ids(ids)
        timeout = check_wait_timeout(timeout)
        return _SharedCompletions(self, checked, timeout)

    def _outcome(self, iterator: AsCompleted, task_id: str) -> Any:
        assert isinstance(iterator, _SharedCompletions)
        record = iterator.records[task_id]
        return decode_outcome(record, self._resolve(record.name), None)

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task of the pool, wherever it runs; see :meth:`Pool.cancel`.

        A queued task is cancelled at once. A task running here is cancelled
        through its scope; one running in another process is marked, and its
        owner cancels it when it hears of it (a notification, or its next
        lease renewal at the latest). Returns once the task has finished.

        Raises:
            UnknownTaskError: The pool has no task with this id.
            DatabaseError: The database failed.
            PoolClosedError: The pool is closed.
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.cancel")
        check_task_id(task_id)
        self._check_usable()
        before = await self._call(self._store.get, task_id)
        if before.status in FINISHED:
            return False
        record = await self._call(self._store.cancel, task_id)
        if record.status is Status.CANCELLED and before.status is Status.QUEUED:
            emit("info", "task.cancelled", pool=self._name, task_id=task_id, key=record.key)
        if record.status in FINISHED:
            self._submitted.discard(task_id)
            self._wake_waiters(task_id)  # the listener drops this process's own notification
        task = self._running.get(task_id)
        if task is not None:
            self._cancel_here(task)
        if record.status not in FINISHED:
            self._cancelling.add(task_id)
            try:
                # Not shielded: the request is committed, and an owner that died
                # answers only once its lease expired.
                record = await self._finished(task_id)
            finally:
                self._cancelling.discard(task_id)
        return record.status is Status.CANCELLED

    @staticmethod
    def _cancel_here(task: _Claimed) -> None:
        task.cancelling = True
        if task.scope is not None:
            task.scope.cancel()

    # -- introspection ----------------------------------------------------------------

    def _info(self, record: TaskRecord) -> TaskInfo:
        task = Task(record, self._resolve(record.name), ())
        return Tasks.info(task)

    def info(self, task_id: str) -> TaskInfo:
        """Return a snapshot of one task, read from the database (one query on the
        event loop's thread).

        Raises:
            TypeError: ``task_id`` is not a str.
            UnknownTaskError: The pool has no task with this id.
            DatabaseError: The database failed.
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.info")
        return self._info(self._reader.get(check_task_id(task_id)))

    def tasks(self) -> list[TaskInfo]:
        """Return a snapshot of every task of the pool, in submission order (one query)."""
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.tasks")
        return [self._info(record) for record in self._reader.tasks()]

    def statistics(self) -> PoolStatistics:
        """Return the pool's counts by status across every process, and this process's workers."""
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.statistics")
        c = self._reader.statistics()
        return PoolStatistics(
            strategy=self._settings.strategy,
            max_concurrent=self._settings.max_concurrent,
            max_queued=None,
            queued=c[Status.QUEUED],
            running=c[Status.RUNNING],
            completed=c[Status.COMPLETED],
            failed=c[Status.FAILED],
            rejected=c[Status.REJECTED],
            cancelled=c[Status.CANCELLED],
            waiting_for_function=0,
            flushes=0,
            workers=self._shared.workers,
            threads=self._runner.threads.borrowed_tokens,
        )

    # -- running tasks ----------------------------------------------------------------

    async def _keys_with(self, prefix: str) -> list[str]:
        """The greatest key with ``prefix`` (the newest slot's, for a schedule)."""
        key = await self._call_again(self._store.newest_key, prefix)
        return [] if key is None else [key]

    def _start(self, tg: anyio.abc.TaskGroup) -> None:
        self._schedules.start(tg)
        self._runner.start(tg)
        tg.start_soon(self._writer.run)
        tg.start_soon(self._listen)
        if self._shared.workers:
            tg.start_soon(self._work)
            tg.start_soon(self._renew)

    def _wake_claimer(self) -> None:
        self._claim_wanted.set()

    async def _work(self) -> None:
        try:
            with self._runner.scope:
                async with anyio.create_task_group() as tg:
                    self._task_group = tg
                    try:
                        await self._claim_loop()
                        # A claim formed before claiming stopped starts its tasks here.
                        await self._writer.settle()
                    finally:
                        self._task_group = None
        finally:
            self._work_done.set()

    def _claim_request(self) -> ClaimRequest | None:
        """The claim the writer's next group makes: this process's free workers, if any.

        A task's worker is free once its outcome is queued: the group that
        records the outcome claims the next task, in the same transaction.
        """
        free = self._shared.workers - self._busy
        if not self._claiming or self._task_group is None or free <= 0:
            return None
        settings = self._settings
        return ClaimRequest(
            limit=free,
            lease=self._shared.lease,
            max_concurrent=settings.max_concurrent,
            max_recoveries=settings.max_recoveries,
        )

    def _claimed(self, claim: Claim) -> None:
        """Start what a group claimed."""
        self._at_limit = claim.at_limit
        for record in claim.recovered:
            self._recovered(record)
        tg = self._task_group
        if tg is None:
            return  # abandoned: the tasks stay running until their lease expires
        for record in claim.started:
            self._busy += 1
            task = self._running[record.id] = _Claimed(record)
            task.cancelling = record.id in self._cancelling
            tg.start_soon(self._run_claimed, task)

    async def _claim_loop(self) -> None:
        #: Whether the last claim left due tasks behind: the pool's limit holds them,
        #: unless they became due between the claim and the look at the next due time.
        behind = False
        while self._claiming:
            self._claim_wanted = anyio.Event()
            delay = POLL
            free = self._shared.workers - self._busy
            if free > 0:
                try:
                    claim = await self._writer.claim()
                    if claim is not None and len(claim.started) < free:
                        # Workers stay free: sleep no longer than until the next
                        # delayed task is due (a submit's notification wakes sooner).
                        due = await self._call(self._store.seconds_until_due)
                        if due is not None and due > 0:
                            delay = min(POLL, due)
                        elif due is not None and not behind:
                            delay = 0.0  # claim once more before waiting for a free slot
                        behind = due is not None and due <= 0
                    else:
                        behind = False
                except DatabaseError as exc:
                    emit("error", "pool.claim_failed", pool=self._name, error=str(exc))
            with anyio.move_on_after(delay):
                await self._claim_wanted.wait()

    def _recovered(self, record: TaskRecord) -> None:
        emit(
            "warning",
            "task.recovered",
            pool=self._name,
            task_id=record.id,
            key=record.key,
            status=record.status.value,
            recoveries=record.recoveries,
        )
        if record.status in FINISHED:
            self._wake_waiters(record.id)

    async def _run_claimed(self, task: _Claimed) -> None:
        record = task.record
        emit("debug", "task.started", pool=self._name, task_id=record.id, key=record.key)
        freed = claimed = False
        try:
            try:
                fn = self._resolve(record.name)
                if fn is None:
                    raise LookupError(
                        f"function {record.name!r} of task {record.id} cannot be found "
                        "in this process"
                    )
                args: tuple[Any, ...] = ()
                if not isinstance(record.args, msgspec.UnsetType):
                    fn, args = decode_call(fn, record.args)  # a partial if keywords were stored
            except Exception as exc:
                self._outcomes.failed_attempt(task, exc, 0.0)
            else:
                task.fn, task.args = fn, args
                if task.cancelling:
                    self._outcomes.end(task, Status.CANCELLED, reason="cancelled")
                elif not task.lost:
                    await self._runner._attempt(task, fn)
            # The attempt is over: no renewal or cancel is for it while its outcome
            # is written (the ``finally`` covers an attempt that raised).
            self._forget(task)
            # The worker is free once the outcome is queued: the group that
            # records it claims for this slot too.
            self._busy -= 1
            freed = True
            claimed = await self._write(task)
        finally:
            self._forget(task)
            if not freed:
                self._busy -= 1
            if not claimed:
                self._wake_claimer()

    def _forget(self, task: _Claimed) -> None:
        # The group that records a retry may claim the task again at once:
        # then the entry is its next attempt's, not this one's.
        if self._running.get(task.record.id) is task:
            del self._running[task.record.id]

    async def _write(self, task: _Claimed) -> bool:
        """Write how ``task``'s attempt ended, if this process still owns it.

        Returns:
            Whether a group committed it (that group also claimed for the free
            workers) and no retry of it is waiting to be due.
        """
        record, outcome = task.record, task.outcome
        if task.lost or outcome is None:
            self._lease_lost(record)
            return False
        try:
            stored = await self._write_again(outcome, task.delay)
        except (DatabaseError, PoolClosedError) as exc:
            # Still failing after a lease: the lease lapses and another claim runs
            # the task again (at least once).
            emit("error", "task.write_failed", pool=self._name, task_id=record.id, error=str(exc))
            return False
        if stored is None:
            self._lease_lost(record)
            return True
        if stored.status is Status.QUEUED:
            emit(
                "warning",
                "task.retry_scheduled",
                pool=self._name,
                task_id=record.id,
                key=record.key,
                attempt=record.attempts,
                delay=round(task.delay, 3),
                error=f"{stored.error_type}: {stored.error_message}",
            )
            return False  # the claimer learns when the retry is due
        if stored.status is Status.FAILED:
            emit(
                "warning",
                "task.failed",
                pool=self._name,
                task_id=record.id,
                key=record.key,
                attempts=record.attempts,
                error=f"{stored.error_type}: {stored.error_message}",
            )
        elif stored.status is Status.CANCELLED:
            emit(
                "info", "task.cancelled", pool=self._name, task_id=record.id, key=record.key,
                reason="cancelled",
            )  # fmt: skip
        self._submitted.discard(record.id)
        self._done[record.id] = stored
        if len(self._done) > _KEEP_DONE:
            del self._done[next(iter(self._done))]
        self._wake_waiters(record.id)
        return True

    async def _write_again(self, outcome: TaskRecord, delay: float) -> TaskRecord | None:
        """Record an outcome by group commit; a failed group is tried again for up to a lease.

        Guarded by owner and attempt, so writing again cannot overwrite a newer outcome.

        Raises:
            DatabaseError: The database still failed after a lease.
        """
        return await self._again(functools.partial(self._writer.outcome, outcome, delay))

    def _lease_lost(self, record: TaskRecord) -> None:
        emit(
            "warning",
            "task.lease_lost",
            pool=self._name,
            task_id=record.id,
            key=record.key,
            attempt=record.attempts,
        )

    def _lose(self, task: _Claimed) -> None:
        task.lost = True
        if task.scope is not None:
            task.scope.cancel()

    async def _renew(self) -> None:
        lease = self._shared.lease
        renewed = anyio.current_time()
        while True:
            await anyio.sleep(lease / 3)
            checked = dict(self._running)
            if not checked:
                renewed = anyio.current_time()
                continue
            asked = anyio.current_time()
            renewal = None
            # A call that hangs past the lease must not keep the attempts going.
            with anyio.move_on_after(max(0.0, renewed + lease - asked)):
                try:
                    renewal = await anyio.to_thread.run_sync(
                        functools.partial(self._store.renew, self._owner, lease=lease),
                        abandon_on_cancel=True,
                    )
                except DatabaseError as exc:
                    emit("error", "pool.renew_failed", pool=self._name, error=str(exc))
            if renewal is None:
                if anyio.current_time() - renewed >= lease:
                    for task in list(self._running.values()):
                        self._lose(task)
                continue
            renewed = asked
            for task_id, task in checked.items():
                if self._running.get(task_id) is not task:
                    continue  # its attempt ended meanwhile
                if task_id not in renewal.owned:
                    self._lose(task)
                elif task_id in renewal.cancel_requested:
                    self._cancel_here(task)

    async def _listen(self) -> None:
        listener = self._listener
        polled = anyio.current_time()
        while True:
            try:
                payloads = await anyio.to_thread.run_sync(
                    listener.wait, POLL, limiter=self._listen_limiter, abandon_on_cancel=True
                )
            except DatabaseError as exc:
                emit("error", "pool.listen_failed", pool=self._name, error=str(exc))
                await anyio.sleep(POLL)
                payloads = [RECONNECTED]
            poll = not payloads or RECONNECTED in payloads or anyio.current_time() - polled >= POLL
            for payload in payloads:
                if payload == "queued":
                    self._wake_claimer()
                elif payload.startswith("finished "):
                    # One notification per group: "finished t<seq> t<seq> ...".
                    for task_id in payload.split()[1:]:
                        self._submitted.discard(task_id)
                        self._wake_waiters(task_id)
                    if self._at_limit:
                        self._wake_claimer()  # slots of the pool are free
                elif payload.startswith("cancel t"):
                    task = self._running.get(payload.removeprefix("cancel "))
                    if task is not None:
                        self._cancel_here(task)
            if poll:
                polled = anyio.current_time()
                self._wake_claimer()
                await self._poll_waiters()

    async def _poll_waiters(self) -> None:
        """Look up the tasks someone waits for: a notification may have been missed."""
        watched = list(self._waiters.keys() | self._watchers.keys())
        if not watched:
            return
        try:
            found = await self._call(self._store.get_many, watched)
        except DatabaseError as exc:
            emit("error", "pool.poll_failed", pool=self._name, error=str(exc))
            return
        for task_id in watched:
            record = found.get(task_id)
            if record is None or record.status in FINISHED:
                self._wake_waiters(task_id)  # the waiter reads it again, or learns it is gone

    async def _drain(self) -> None:
        """Wait for the tasks submitted here (if this process runs tasks), then for its attempts."""
        self._schedules.stop()
        if self._shared.workers:
            for task_id in list(self._submitted):
                with contextlib.suppress(UnknownTaskError):  # deleted meanwhile
                    await self._finished(task_id)
        self._claiming = False
        self._wake_claimer()
        if self._shared.workers:
            # Claims in flight start their tasks, and those run to their end.
            await self._work_done.wait()

    async def _abandon(self) -> None:
        """Stop the attempts running here: they stay ``running`` until their lease expires."""
        self._schedules.stop()
        self._claiming = False
        self._runner.scope.cancel()


class _SharedCompletions(AsCompleted):
    """:class:`AsCompleted` for a shared pool: told of finished tasks by its notifications.

    A notification only hints that a task finished: the iterator reads the
    records of the tasks it was told of (and the pool's polls wake it for
    those found finished, should a notification be lost).
    """

    def __init__(self, pool: SharedPool, ids: list[str], timeout: float | None) -> None:
        super().__init__(ids, timeout, pool._loop_thread)
        self._pool = pool
        #: The final records of the tasks seen finished, for ``results``.
        self.records: dict[str, TaskRecord] = {}
        self._ready: collections.deque[TaskRecord] = collections.deque()
        self._watched: set[str] = set()

    def _watch(self, task_ids: Iterable[str]) -> None:
        watchers = self._pool._watchers
        for task_id in task_ids:
            if task_id not in self._watched:
                watchers.setdefault(task_id, []).append(self._inbox)
                self._watched.add(task_id)

    async def _read(self, task_ids: list[str]) -> None:
        """Read the records of ``task_ids`` (watched first, so no notification is
        missed) and make those finished ready, oldest first."""
        pool = self._pool
        self._watch(task_ids)
        found = await pool._call_again(pool._store.get_many, task_ids)
        finished = []
        for task_id in task_ids:
            record = found.get(task_id)
            if record is None:
                raise UnknownTaskError(task_id)
            if record.status in FINISHED:
                finished.append(record)
                self._unwatch(task_id)
        finished.sort(key=lambda r: (r.finished_at or 0.0, r.seq))
        self._ready.extend(finished)

    def _unwatch(self, task_id: str) -> None:
        self._watched.discard(task_id)
        inboxes = self._pool._watchers.get(task_id)
        if inboxes is not None and self._inbox in inboxes:
            inboxes.remove(self._inbox)
            if not inboxes:
                del self._pool._watchers[task_id]

    async def _start(self) -> None:
        pool = self._pool
        pool._check_usable()
        assert self._pending is not None
        self._ready.clear()  # a cancelled start is made again, whole
        unread = []
        for task_id in self._pending:
            done = pool._done.get(task_id)
            if done is None:
                unread.append(task_id)
            else:
                self._ready.append(done)
        if unread:
            await self._read(unread)

    async def _next(self) -> str:
        inbox = self._inbox
        assert self._pending is not None
        while not self._ready:
            await inbox.wait()
            self._pool._check_usable()
            hinted = {task_id for task_id in inbox.arrived if task_id in self._pending}
            inbox.arrived.clear()
            if hinted:
                self._watched -= hinted  # the pool dropped these registrations when it woke us
                # Watched again first: should this read be cancelled, a poll finds them.
                await self._read(list(hinted))
        record = self._ready.popleft()
        self.records[record.id] = record
        return record.id

    def _unregister(self) -> None:
        for task_id in list(self._watched):
            self._unwatch(task_id)
        self._inbox.arrived.clear()


def _connections(workers: int) -> int:
    """Threads using the store at once: claims, renewals, submits, waits, and the outcomes."""
    return 4 + min(workers, 8)


@asynccontextmanager
async def serve_shared(
    dsn: str, settings: _Settings, shared: _SharedSettings
) -> AsyncIterator[SharedPool]:
    """Open the pool ``shared.name`` in the database ``dsn`` for the block; see ``open_pool``."""
    connections = _connections(shared.workers)
    store = await anyio.to_thread.run_sync(
        functools.partial(PostgresStore.connect, dsn, shared.name, connections=connections)
    )
    reader: PostgresStore | None = None
    listener: Listener | None = None
    pool: SharedPool | None = None
    error: BaseException | None = None
    try:
        await anyio.to_thread.run_sync(store.migrate)
        dropped = await anyio.to_thread.run_sync(
            functools.partial(
                store.prune, keep=settings.keep_finished, keep_for=settings.keep_finished_for
            )
        )
        counts = await anyio.to_thread.run_sync(store.statistics)
        reader = PostgresStore(dsn, shared.name, connections=1)
        # This process learns of its own changes at once, not from the server.
        listener = await anyio.to_thread.run_sync(functools.partial(store.listen, ignore_own=True))
        pool = SharedPool(store, reader, listener, settings, shared, connections)
        total = sum(counts.values())
        queued = counts[Status.QUEUED] + counts[Status.RUNNING]
        pool.recovery = msgspec.structs.replace(
            pool.recovery,
            created=total == 0,
            tasks=total,
            queued=queued,
            finished=total - queued,
            dropped_finished=dropped,
        )
        emit(
            "info",
            "pool.opened",
            pool=shared.name,
            created=total == 0,
            tasks=total,
            queued=queued,
            workers=shared.workers,
            owner=pool._owner,
            dropped_finished=dropped,
        )
        async with anyio.create_task_group() as tg:
            pool._start(tg)
            try:
                try:
                    yield pool
                except BaseException as exc:
                    error = exc
                    await pool._abandon()
                else:
                    await pool._drain()
            finally:
                tg.cancel_scope.cancel()
    finally:
        if pool is not None:
            pool._closed = True
            for task_id in list(pool._waiters):
                pool._wake_waiters(task_id)
            for inboxes in list(pool._watchers.values()):
                for inbox in inboxes:
                    inbox(None)
        with anyio.CancelScope(shield=True):
            if listener is not None:
                await anyio.to_thread.run_sync(listener.close)
            store.close()
            if reader is not None:
                reader.close()
        emit("info", "pool.closed", pool=shared.name)
    if error is not None:
        raise error
