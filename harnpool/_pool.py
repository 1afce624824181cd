"""The pool's facade: Pool and open_pool, delegating to the tasks, the workers and the storage."""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, TypeVarTuple, cast, overload

import anyio
import anyio.abc

from ._completion import AsCompleted, JournalCompletions
from ._context import running, submitter
from ._errors import (
    JournalWriteError,
    PoolClosedError,
    TaskNotAttached,
    WaitTimeout,
)
from ._events import emit
from ._info import PoolStatistics, TaskInfo
from ._journal_storage import JournalStorage
from ._queue import Strategy
from ._records import FINISHED, Status
from ._recovery import opened_events, recover
from ._results import decode_outcome
from ._schedule import CatchUp, Schedules, check_schedule
from ._settings import (
    OnFull,
    Start,
    _Settings,
    check_path,
    check_shared,
    check_task_id,
    check_task_ids,
    check_wait_timeout,
    is_dsn,
)
from ._storage import Durable, Found, Storage
from ._task import Job, Task, TaskFunction, TaskId
from ._threads import check_loop_thread
from ._transitions import Tasks
from ._waiting import Waits
from ._worker import Workers

__all__ = ["Job", "OnFull", "Pool", "TaskId", "open_pool"]

R = TypeVar("R")
Ts = TypeVarTuple("Ts")


class Pool:
    """A durable pool of tasks. Make one with :func:`open_pool`."""

    def __init__(self, storage: Storage, found: Found, settings: _Settings) -> None:
        self._storage = storage
        self._settings = settings
        # Made on the event loop's thread (in serve): the only thread that may call it.
        self._loop_thread = threading.get_ident()
        self._tasks = Tasks(storage, settings, found.counter)
        self._workers = Workers(self._tasks)
        self._waits = Waits(self._tasks)
        self.recovery = recover(self._tasks, found)
        self._schedules = Schedules(storage.path, self._keys_with, self.submit_many)
        storage.on_failure = self._on_failure

    @property
    def path(self) -> str:
        """The journal's path."""
        return self._storage.path

    def __repr__(self) -> str:
        state = "closed" if self._tasks.closed else "failed" if self._storage.error else "open"
        c = self._tasks.counts
        return (
            f"<Pool {self.path!r} {state} max_concurrent={self._settings.max_concurrent} "
            f"queued={c[Status.QUEUED]} running={c[Status.RUNNING]} "
            f"completed={c[Status.COMPLETED]} failed={c[Status.FAILED]}>"
        )

    # -- submitting -------------------------------------------------------------------

    # An async function first, so its result type is what it awaits to, not a coroutine.
    @overload
    async def submit(
        self,
        fn: Callable[[*Ts], Awaitable[R]],
        /,
        *args: *Ts,
        key: str | None = None,
        priority: int = 0,
        group: str | None = None,
        retries: int | None = None,
        retry_on: Iterable[type[BaseException]] | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        run_at: datetime.datetime | None = None,
    ) -> TaskId[R]: ...

    @overload
    async def submit(
        self,
        fn: Callable[[*Ts], R],
        /,
        *args: *Ts,
        key: str | None = None,
        priority: int = 0,
        group: str | None = None,
        retries: int | None = None,
        retry_on: Iterable[type[BaseException]] | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        run_at: datetime.datetime | None = None,
    ) -> TaskId[R]: ...

    async def submit(
        self,
        fn: Callable[[*Ts], Any],
        /,
        *args: *Ts,
        key: str | None = None,
        priority: int = 0,
        group: str | None = None,
        retries: int | None = None,
        retry_on: Iterable[type[BaseException]] | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        run_at: datetime.datetime | None = None,
    ) -> TaskId[Any]:
        """Submit ``fn(*args)`` to run, and return the task's id once that is durable.

        ``fn`` is an async function (awaited on a worker) or a plain function
        (run in a worker thread); pass the function and its arguments, not a
        coroutine object, since only a function can run again after a crash.
        A function registered with :func:`harnpool.task` is journaled by name
        with its arguments, and resumes on its own when the pool is reopened.
        Keyword arguments go through :func:`functools.partial`:
        ``submit(functools.partial(fn, size=2), x)``; a partial of a registered
        function stays registered, its arguments and keywords journaled.

        Each attempt runs in a fresh copy of the caller's ``contextvars``
        context, as taken at submit (a task a reopen resumes, with no
        submitter, runs in a clean one); inside it,
        :func:`harnpool.current_task` says which task and attempt it is.

        Whatever ``fn`` raises fails only its own attempt: any Exception, a
        BaseException subclass of its own, even a cancellation exception that
        no cancelled scope of the pool or its host caused (say, from awaiting
        a future someone else cancelled). Only KeyboardInterrupt, SystemExit
        and GeneratorExit stop the pool, leaving the task unfinished as a
        crash would. With ``max_queued`` set, a submit to a full queue does
        what ``on_full`` says; ``"drop_oldest"`` never drops a task a worker
        is about to start, but lets that worker take it first.

        Args:
            fn: The function to run.
            *args: Its positional arguments. Kept in memory only, unless ``fn``
                is registered: then they are stored, and must encode as JSON.
            key: The idempotency key. If a task with this key exists, in any
                status, its id is returned and nothing new runs. If that task
                was recovered from the journal and has not run yet, ``fn`` and
                ``args`` are attached to it, so it runs in its original place.
            priority: Higher runs first (with the ``priority`` and ``fair``
                strategies); equal priorities run in submission order.
            group: The label the ``fair`` strategy round-robins between.
            retries: How many times a failed attempt is retried, with
                exponential backoff and jitter (default: the pool's).
            retry_on: The exception types that are retried (default: the
                pool's, else any ``Exception``; other BaseExceptions are
                retried only if named here).
            timeout: Seconds an attempt may run before it is cancelled and
                counts as a failed attempt (default: the pool's).
            delay: Seconds from now before the task may start. The task is
                queued at once (``info().not_before`` holds its due time, kept
                across a restart); once due, it runs in the queue's order.
            run_at: An aware datetime before which the task does not start
                (the other way to say ``delay``; give one or neither).

        Returns:
            The task's id: a plain ``str``, typed ``TaskId[R]`` for a function
            that returns (or, if async, awaits to) an ``R``.

        Raises:
            TypeError: ``fn`` is a coroutine object or not callable, or an
                option has the wrong type: ``key`` and ``group`` must be str or
                None, ``priority`` an int (not a bool), ``retries`` an int or
                None, ``retry_on`` an iterable of exception types or None,
                ``timeout`` and ``delay`` numbers or None, ``run_at`` a datetime
                or None; or both ``delay`` and ``run_at`` were given. Nothing
                was written.
            ValueError: An option is out of range: a ``key`` or ``group`` that
                does not encode as UTF-8 (a lone surrogate), a ``priority`` or
                ``retries`` beyond 64 bits, ``retries`` below 0, a ``timeout``
                not finite or not above 0, a ``delay`` negative or not finite,
                a naive ``run_at``. Nothing was written.
            ArgumentsNotEncodableError: ``fn`` is registered (or a partial of a
                registered function) and ``args`` or the partial's arguments
                cannot be stored; nothing was written.
            QueueFull: The queue is full and ``on_full`` is ``"reject"``.
            PoolClosedError: The pool is closed.
            JournalWriteError: The journal failed; the pool has stopped.
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.submit")
        job = Job(
            fn,
            *args,
            key=key,
            priority=priority,
            group=group,
            retries=retries,
            retry_on=retry_on,
            timeout=timeout,
            delay=delay,
            run_at=run_at,
        )
        return cast("TaskId[Any]", await self._submit_one(job))

    async def _submit_one(self, job: Job) -> str:
        """What ``submit_many([job])`` does, without the lists around one job."""
        tasks = self._tasks
        record = tasks.prepare(job)
        tasks.check_usable()
        context = submitter.get() or contextvars.copy_context()
        task = tasks.existing(job, context)
        if task is None:
            reason = None
            if tasks.bounded:
                reason = await tasks.admit()
                task = tasks.existing(job, context)  # admit may have waited: look again
            if task is None:
                task = tasks.add(job, record, reason, context)
        # Queued by its batch's callback once durable (see Tasks.add): no shield needed.
        batch = task.batch
        if batch is not None and not batch.durable:
            await batch.wait()
        return task.record.id

    async def submit_many(self, jobs: Iterable[Job]) -> list[str]:
        """Submit several tasks, with one durable write where nothing blocks, and
        return their ids in order.

        Each :class:`Job` is handled as :meth:`submit` would handle it, keys
        deduplicated against the pool and within ``jobs``. Unless a full queue
        makes it wait (``on_full="block"``), every new record goes in one flush.

        Raises:
            TypeError: ``jobs`` is not an iterable of :class:`Job`; nothing was
                submitted. (A job's own options are checked when it is built.)
            ValueError: A registered job's function name cannot be stored;
                nothing was submitted.
            ArgumentsNotEncodableError: A registered function's arguments cannot
                be stored; nothing was submitted.
            QueueFull: The queue is full and ``on_full`` is ``"reject"``; the jobs
                before the refused one were submitted.
            PoolClosedError: The pool is closed.
            JournalWriteError: The journal failed; the pool has stopped.
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.submit_many")
        if isinstance(jobs, Job) or not isinstance(jobs, Iterable):
            raise TypeError(f"jobs must be an iterable of Job, not {type(jobs).__qualname__}")
        jobs = list(jobs)
        for job in jobs:
            if not isinstance(job, Job):
                raise TypeError(f"jobs must hold only Job objects, not {type(job).__qualname__}")
        prepared = [self._tasks.prepare(job) for job in jobs]  # every check before any write
        self._tasks.check_usable()
        # Each attempt runs in a copy of it (a copy is O(1)): what it sets stays there.
        context = submitter.get() or contextvars.copy_context()
        tasks: list[Task] = []
        try:
            for job, record in zip(jobs, prepared, strict=True):
                existing = self._tasks.existing(job, context)
                if existing is not None:
                    tasks.append(existing)
                    continue
                reason = None
                if self._tasks.bounded:
                    reason = await self._tasks.admit()
                    # admit may have waited: look again
                    existing = self._tasks.existing(job, context)
                    if existing is not None:
                        tasks.append(existing)
                        continue
                tasks.append(self._tasks.add(job, record, reason, context))
        finally:
            # Each new task is queued by its batch's callback once durable (see
            # _add), so a submitter cancelled here loses nothing: no shield needed.
            seen: Durable | None = None
            for task in tasks:
                batch = task.batch
                if batch is not None and batch is not seen:
                    seen = batch
                    if not batch.durable:
                        await batch.wait()
        return [task.record.id for task in tasks]

    # -- periodic tasks ---------------------------------------------------------------

    async def schedule(
        self,
        name: str,
        fn: TaskFunction,
        *,
        every: datetime.timedelta | float | None = None,
        cron: str | None = None,
        catch_up: CatchUp = "latest",
    ) -> list[str]:
        """Run a registered function periodically while the pool is open.

        Each slot, a time of ``every`` (slots aligned to the Unix epoch, so
        every process computes the same ones) or of ``cron`` (evaluated in
        UTC), becomes one task keyed ``f"{name}@{slot.isoformat()}"``, whose
        function receives the slot, an aware UTC datetime, as its only
        argument. Keys are idempotent, so a slot fires once, across restarts
        and however many processes of a PostgreSQL pool declare the schedule.
        The schedule is not stored: declare it after each open; it ends when
        the pool closes, or with :meth:`unschedule`.

        Args:
            name: The schedule's name: the start of its tasks' keys.
            fn: A function registered with :func:`harnpool.task`, taking one
                positional argument annotated ``datetime.datetime``.
            every: A ``datetime.timedelta`` or a number of seconds.
            cron: A cron expression: five fields (minute hour day month
                weekday), or six with seconds first. Needs ``harnpool[cron]``.
            catch_up: What becomes of the slots that passed since the newest
                slot that fired (found by its key) while no process ran the
                schedule: ``"latest"`` submits the newest of them,
                ``"all"`` every one (at most 1,000, the newest), ``"none"``
                none. A schedule that never fired has none.

        Returns:
            The ids of the tasks submitted for missed slots.

        Raises:
            TypeError: ``name`` is not a str; ``fn`` is not registered, or does
                not take the slot as its one positional ``datetime`` argument;
                both or neither of ``every`` and ``cron`` were given, or one
                has the wrong type.
            ValueError: ``name`` is empty or holds ``@``; ``every`` is not
                above 0; ``catch_up`` is unknown; a schedule with this name
                is already declared on the pool.
            InvalidCronError: ``cron`` cannot be parsed.
            CronUnavailableError: ``cron`` was given without the cron extra.
            PoolClosedError: The pool is closed or closing.

        Nothing is looked up or written before every argument was checked.
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.schedule")
        plan = check_schedule(name, fn, every, cron, catch_up)
        return await self._schedules.add(plan)

    def unschedule(self, name: str) -> bool:
        """Stop the schedule ``name``; the tasks of slots that already fired go on.

        Returns:
            True if the schedule was declared on this pool, else False.

        Raises:
            TypeError: ``name`` is not a str.
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.unschedule")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__qualname__}")
        return self._schedules.remove(name)

    async def _keys_with(self, prefix: str) -> list[str]:
        return [key for key in self._tasks.by_key if key.startswith(prefix)]

    # -- waiting and cancelling -------------------------------------------------------

    @overload
    async def wait(self, task_id: TaskId[R], *, timeout: float | None = None) -> R: ...

    @overload
    async def wait(self, task_id: str, *, timeout: float | None = None) -> Any: ...

    async def wait(self, task_id: str, *, timeout: float | None = None) -> Any:
        """Wait for a task to finish and return its result.

        The result is decoded from the journal, as the task function's return
        annotation when this process knows the function, else as plain JSON
        types: it is the same value before and after a restart.

        Args:
            task_id: The task to wait for.
            timeout: Give up after this many seconds; the task is not affected.

        Returns:
            The task's result, once its ``completed`` record is durable. To a
            type checker it is an ``R`` for a ``TaskId[R]`` (what
            :meth:`submit` returned), ``Any`` for a plain ``str``.

        Raises:
            TypeError: ``task_id`` is not a str, or ``timeout`` is not a number
                or None.
            ValueError: ``timeout`` is negative or not finite.
            UnknownTaskError: No task has this id.
            TaskNotAttached: The task has not finished and this process does
                not know its function, so it cannot run (it was recovered from
                the journal): submit it again with its key first.
            WaitDeadlock: Called from inside a running task of this pool, for
                a task that could never finish: the caller itself, a task that
                waits for the caller, or any task when every other slot is
                held by a task blocked in ``wait`` too.
            TaskFailed: The task's function raised on its last attempt (or
                returned a value that cannot be stored).
            TaskCancelled: The task was cancelled.
            TaskRejected: A full queue dropped the task.
            WaitTimeout: ``timeout`` ran out first (also a ``TimeoutError``).
            PoolClosedError: The pool closed before the task finished.
            JournalWriteError: The journal failed; the pool has stopped.
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.wait")
        timeout = check_wait_timeout(timeout)
        task = self._tasks.get(check_task_id(task_id))
        self._tasks.check_usable()
        record = task.record
        if task.fn is None and record.status not in FINISHED:
            raise TaskNotAttached(task_id=record.id, key=record.key, function=record.function)
        current = running.get()
        waiter = current[1] if current is not None and current[0] is self._tasks else None
        if waiter is not None:
            self._waits.enter(waiter, task)
        try:
            if timeout is None:
                await self._waits.finished(task)
            else:
                with anyio.move_on_after(timeout) as scope:
                    await self._waits.finished(task)
                if scope.cancelled_caught:
                    raise WaitTimeout(task_id, timeout)
        finally:
            if waiter is not None:
                self._waits.leave(waiter, task)
        return decode_outcome(task.record, task.fn, task.exc)

    def as_completed(self, ids: Iterable[str], *, timeout: float | None = None) -> AsCompleted:
        """Iterate over task ids in the order their tasks finish:
        ``async for task_id in pool.as_completed(ids):``.

        Each id is yielded once its task has finished, however it finished
        (completed, failed, cancelled, rejected), when :meth:`wait` would
        return or raise for it; call :meth:`wait` for the outcome. Tasks
        already finished come first, in the order given. An id given more
        than once is yielded once. Breaking out of the loop, or calling the
        iterator's ``aclose()``, stops waiting; the tasks are not affected.

        Args:
            ids: The ids of the tasks to wait for, read at once.
            timeout: Seconds the whole iteration may take, counted from its
                first step; the tasks are not affected.

        Returns:
            An async iterator of task ids.

        Raises:
            TypeError: ``ids`` is a str or not an iterable of str, or
                ``timeout`` is not a number or None (raised by the call).
            ValueError: ``timeout`` is negative or not finite (by the call).
            UnknownTaskError: No task has one of the ids (from the first step,
                as every error below).
            TaskNotAttached: As for :meth:`wait`.
            WaitDeadlock: As for :meth:`wait`, for any of the tasks.
            WaitTimeout: ``timeout`` ran out; ``task_id`` names the first
                unfinished task in the order given. The iteration ends.
            PoolClosedError: The pool closed before the tasks finished.
            JournalWriteError: The journal failed; the pool has stopped.
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.as_completed")
        checked = check_task_ids(ids)
        timeout = check_wait_timeout(timeout)
        current = running.get()
        waiter = current[1] if current is not None and current[0] is self._tasks else None
        return JournalCompletions(
            self._tasks, self._waits, waiter, checked, timeout, self._loop_thread
        )

    async def results(self, ids: Iterable[str], *, timeout: float | None = None) -> list[Any]:
        """Wait for every task in ``ids`` to finish and return their results, in that order.

        Each result is what :meth:`wait` returns for its id (an id given
        twice gives its result twice). If a task did not complete, once every
        task has finished this raises what :meth:`wait` raises for the first
        such id in the order given, so the error does not depend on which
        task happened to finish first, and every task can be inspected at once.

        Args:
            ids: The ids of the tasks, read at once.
            timeout: Seconds to wait for all of them; the tasks are not affected.

        Returns:
            The results, in the order of ``ids``.

        Raises:
            TypeError, ValueError, UnknownTaskError, TaskNotAttached,
            WaitDeadlock, WaitTimeout, PoolClosedError, JournalWriteError:
                As for :meth:`as_completed`.
            TaskFailed, TaskCancelled, TaskRejected: The first task in the
                order given that did not complete, as :meth:`wait` raises.
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.results")
        iterator = self.as_completed(ids, timeout=timeout)
        try:
            async for _ in iterator:
                pass
        finally:
            iterator.close()
        return [self._outcome(iterator, task_id) for task_id in iterator._ids]

    def _outcome(self, iterator: AsCompleted, task_id: str) -> Any:
        """What :meth:`wait` gives for a task ``iterator`` saw finish."""
        assert isinstance(iterator, JournalCompletions)
        task = iterator.seen[task_id]
        return decode_outcome(task.record, task.fn, task.exc)

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task that has not finished.

        A queued task, or one waiting for a retry, becomes ``cancelled`` at
        once. A running one is cancelled through its cancel scope; a plain
        function running in a thread cannot be interrupted, so its thread is
        abandoned and its result ignored. From the moment ``cancel`` is called,
        the attempt is never retried or recorded failed: if its function
        returns a value anyway (it returned before the cancellation reached
        it, or shielded itself from it), the task is ``completed`` and
        ``cancel`` returns False; however else the attempt ends (the
        cancellation, an exception the function raised or turned it into, a
        timeout), the task is ``cancelled``. Returns once that record is
        durable.

        While the ``async with`` block drains, ``cancel`` works as inside it.
        Once the pool is stopping without draining (the block was left by an
        exception or cancellation) or has drained, tasks are left as they are
        for the next open, and ``cancel`` raises PoolClosedError.

        Returns:
            True if the task was cancelled; False if it had already finished,
            in which case nothing changes, or its function completed anyway.

        Raises:
            TypeError: ``task_id`` is not a str.
            UnknownTaskError: No task has this id.
            PoolClosedError: The pool is closed or stopping, including when it
                began to stop before a running task's cancellation took effect.
            JournalWriteError: The journal failed; the pool has stopped.
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.cancel")
        task = self._tasks.get(check_task_id(task_id))
        self._tasks.check_usable()
        status = task.record.status
        if status in FINISHED:
            return False
        scope = task.scope
        if self._stopping() or (status is Status.RUNNING and scope is None):
            # A running task without a scope had its attempt stopped with the pool.
            raise PoolClosedError(
                f"the pool on {self.path!r} is stopping: task {task_id} stays "
                f"{status.value} for the next open"
            )
        if scope is None:
            self._tasks.end(task, Status.CANCELLED, reason="cancelled")
        else:
            task.cancelling = True
            scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._waits.finished(task)
        return task.record.status is Status.CANCELLED

    def _stopping(self) -> bool:
        """Whether the pool has begun to stop without draining, or has drained."""
        return self._workers.scope.cancel_called or (
            self._tasks.tg is not None and self._tasks.tg.cancel_scope.cancel_called
        )

    # -- introspection ---------------------------------------------------------------

    def info(self, task_id: str) -> TaskInfo:
        """Return a snapshot of one task.

        Raises:
            TypeError: ``task_id`` is not a str.
            UnknownTaskError: No task has this id.
        """
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.info")
        return Tasks.info(self._tasks.get(check_task_id(task_id)))

    def tasks(self) -> list[TaskInfo]:
        """Return a snapshot of every task the pool knows, in submission order."""
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.tasks")
        return [Tasks.info(task) for task in self._tasks.tasks.values()]

    def statistics(self) -> PoolStatistics:
        """Return the pool's counts of tasks by status."""
        check_loop_thread(self._loop_thread, pool=self.path, method="Pool.statistics")
        c = self._tasks.counts
        return PoolStatistics(
            strategy=self._settings.strategy,
            max_concurrent=self._settings.max_concurrent,
            max_queued=self._settings.max_queued,
            queued=c[Status.QUEUED],
            running=c[Status.RUNNING],
            completed=c[Status.COMPLETED],
            failed=c[Status.FAILED],
            rejected=c[Status.REJECTED],
            cancelled=c[Status.CANCELLED],
            waiting_for_function=c[Status.QUEUED] + c[Status.RUNNING] - self._tasks.runnable,
            flushes=self._storage.flushes,
            workers=self._workers.count,
            threads=self._workers.threads.borrowed_tokens,
            dropped_finished=self._tasks.dropped,
            compactions=self._storage.compactions,
        )

    def _start(self, tg: anyio.abc.TaskGroup) -> None:
        tasks = self._tasks
        tasks.tg = tg
        tg.start_soon(self._storage.run)
        tg.start_soon(tasks.run_timer)
        self._schedules.start(tg)
        self._workers.start(tg)
        for task in tasks.queued.values():
            if task.fn is not None:
                tasks.enqueue(task)

    def _on_failure(self, error: JournalWriteError) -> None:
        emit("critical", "journal.write_failed", pool=self.path, error=str(error.__cause__))
        self._workers.scope.cancel()
        self._tasks.wake_all()

    async def _drain(self) -> None:
        self._schedules.stop()
        tasks = self._tasks
        while tasks.runnable and self._storage.error is None:
            tasks.idle = tasks.prims.event()
            await tasks.idle.wait()
        await self._storage.flush()

    async def _abandon(self) -> None:
        """Stop running tasks (they stay ``running`` in the journal) and flush."""
        self._schedules.stop()
        self._workers.scope.cancel()
        with anyio.CancelScope(shield=True):
            # A journal failure was already reported to every waiter; the block's own error goes on.
            with contextlib.suppress(JournalWriteError):
                await self._storage.flush()


@asynccontextmanager
async def open_pool(
    path: str | os.PathLike[str],
    *,
    max_concurrent: int = 100,
    max_queued: int | None = None,
    on_full: OnFull = "block",
    strategy: Strategy = "priority",
    aging: float | None = None,
    retries: int = 0,
    retry_on: Iterable[type[BaseException]] | None = None,
    retry_backoff: float = 0.5,
    retry_backoff_max: float = 60.0,
    timeout: float | None = None,
    keep_finished: int | None = None,
    keep_finished_for: float | None = None,
    max_recoveries: int | None = 5,
    start: Start = "strict",
    name: str | None = None,
    workers: int | None = None,
    lease: float | None = None,
) -> AsyncIterator[Pool]:
    """Open (or create) the durable pool whose journal is at ``path``, or the pool
    ``name`` in the PostgreSQL database ``path`` names.

    A ``path`` starting with ``postgresql://`` or ``postgres://`` is a
    database: many processes, on many hosts, open the same pool there and
    share its tasks, its keys and its ``max_concurrent`` limit (see the
    README's "PostgreSQL" section). Only functions another process can find
    run there: registered ones (:func:`harnpool.task`) and module-level
    functions; the settings it cannot honour (a ``strategy`` other than
    ``"priority"``, ``max_queued``, ``on_full``, ``aging``) are refused.

    Opening locks the journal, replays it, and compacts it (and an open
    journal compacts itself in the background once most of its lines are
    superseded records or dropped tasks' records): tasks a crash
    interrupted while running are queued again at their original place, queued
    tasks stay queued, and finished tasks keep their results. Unfinished tasks
    of registered functions (:func:`harnpool.task`) resume at once; others run
    once their function is known again: submit with the same key.

    Leaving the block normally waits for every task whose function is known to
    finish (retries included). Leaving it by an exception or cancellation
    cancels running tasks; they stay ``running`` in the journal and are resumed
    like crashed ones on the next open. Either way the lock is released.

    Args:
        path: The journal file. Its directory must exist. It is resolved
            first (symbolic links followed): ``<real path>.lock`` and,
            briefly, ``<real path>.compact`` are made beside the file it names.
        max_concurrent: How many tasks may run at once (default 100, like
            aiojobs' ``limit``); workers start as queued tasks need them, up
            to this many. Plain (sync) functions run in worker threads, at
            most ``min(max_concurrent, T)`` at once, where ``T`` is the
            ``total_tokens`` of anyio's default thread limiter when the pool
            opens (40 unless changed); the others wait for a thread. With a
            database the limit holds across every process of the pool.
        max_queued: How many tasks may be queued at once; None for no bound.
        on_full: What a submit does when ``max_queued`` tasks are queued:
            ``"block"`` waits for room, ``"reject"`` raises QueueFull and writes
            nothing, ``"drop_oldest"`` records the oldest queued task rejected
            (once the workers woken to start queued tasks have taken them),
            ``"drop_newest"`` records the new task rejected; a rejected task's
            ``wait`` raises TaskRejected.
        strategy: The order of the ready queue: ``"priority"`` (higher
            priority first, then submission order), ``"fifo"``, ``"lifo"``, or
            ``"fair"`` (round robin between ``group`` labels, each by priority).
            It is kept in the journal's header; reopening with another strategy
            simply orders the queued tasks by the new one.
        aging: With ``priority`` or ``fair``: every this many seconds a queued
            task waits counts as one more priority point, so none waits forever.
        retries: How many times a failed attempt is retried by default.
        retry_on: The exception types retried by default (None: any Exception).
        retry_backoff: The delay before the first retry, in seconds; each
            later one doubles, up to ``retry_backoff_max``, times a random
            factor between 0.5 and 1. A retry's due time is journaled, so one
            scheduled before a crash still happens at its time after it.
        retry_backoff_max: The longest delay between attempts.
        timeout: Seconds an attempt may run by default before it is cancelled
            and counts as a failed attempt (a ``TimeoutError``).
        keep_finished: Keep at most this many finished tasks, the newest;
            None keeps all. Applies on open and while the pool is open: each
            time a task finishes (once its record is durable) the oldest
            finished tasks beyond the limit are dropped from memory, and from
            the journal at its next compaction. A dropped task is unknown to
            ``wait`` and ``info`` (UnknownTaskError, its ``dropped`` True),
            its key no longer deduplicates, and ids are never reused: as
            after a reopen. Wait for a task before that many others finish
            after it, or wait on it before it finishes. On PostgreSQL, finished
            rows beyond the limit are deleted when a pool opens. A schedule
            finds the last slot it fired by its task's key: once retention
            dropped every task of a schedule, its next declaration has no
            missed slots to catch up on.
        keep_finished_for: Drop finished tasks that finished more than this
            many seconds ago, on open and, while open, each time a task
            finishes (on PostgreSQL, when a pool opens); as ``keep_finished``
            otherwise.
        name: PostgreSQL only: the pool's name within the database
            (default ``"default"``).
        workers: PostgreSQL only: how many tasks this process runs at once
            (default: ``max_concurrent``); 0 opens a client that only
            submits, waits and cancels.
        lease: PostgreSQL only: seconds a task this process claimed stays
            its own without renewal (default 30). Leases are renewed every
            ``lease / 3`` seconds; a process that cannot renew them for
            ``lease`` seconds stops those tasks, and a lease that expired is
            reclaimed by the next claim of any process, which counts a
            recovery against ``max_recoveries``.
        max_recoveries: How many times crashes may interrupt a task's runs.
            A task found ``running`` on open was interrupted by the death of its
            process; once that has happened more than this many times it is
            presumed to crash its process and is recorded ``failed`` on open
            (error :class:`TaskCrashLoop`; ``wait`` raises TaskFailed), listed
            in ``pool.recovery.crash_looped``. None never gives up. With a
            limit, a registered task's ``running`` record is made durable
            before its function starts, so even a function that kills its
            process at once is counted. Interrupted runs never use up
            ``retries``.
        start: When a submitted task may start. ``"strict"`` (the default):
            only once its ``queued`` record is durable, so a task runs only if
            its submit could return. ``"eager"``: at once, while that record
            is being written; ``submit`` still returns the id only once it is
            durable, but after a crash a task may have run (even to its end)
            although its submit never returned, and it is then gone from the
            journal or still queued, to run again if submitted again: at least
            once, as for a crash mid-run. Its ``queued``, ``running`` and
            final records usually share one write. Not supported on
            PostgreSQL (a ValueError).

    Yields:
        The open pool; :attr:`Pool.recovery` says what opening found.

    Raises:
        JournalLockedError: Another pool holds the journal.
        JournalLinkError: The journal file has more than one hard link.
        JournalOpenError: Opening or compacting failed on a file operation
            (also an OSError, with its errno).
        JournalCorruptError: The journal cannot be trusted; it was not changed.
        JournalVersionError: A newer harnpool wrote the journal.
        JournalWriteError: The journal failed while the pool was open.
        TypeError: A setting has the wrong type: ``path`` must be a str or
            ``os.PathLike`` of str; counts are ints (a bool is not one);
            seconds are ints or floats; ``on_full``, ``strategy`` and
            ``start`` are str;
            ``retry_on`` is an iterable of exception types.
        ValueError: A setting is out of range: counts below their minimum or
            beyond 64 bits, seconds negative (or 0 for ``aging`` and
            ``timeout``), NaN or infinite, ``retry_backoff_max`` below
            ``retry_backoff``, an unknown ``on_full``, ``strategy`` or
            ``start``, an
            empty ``path`` or one holding a NUL; ``name``, ``workers`` or
            ``lease`` given with a journal path; with a database, a setting
            a shared pool does not support.
        TypeError: With a database, a function another process cannot find
            (a lambda, a closure, a bound method, or a partial of one) is
            refused at submit.
        DatabaseError: The database cannot be reached or failed.
        SchemaVersionError: A newer harnpool created the database's schema.

    Every setting is checked before the journal is locked or read, so a wrong
    one leaves the file as it was; if opening fails after the lock was taken,
    the lock is released before the error propagates.
    """
    # Every setting is checked before the lock is taken or the file touched.
    path = check_path(path)
    settings = _Settings(
        max_concurrent=max_concurrent,
        max_queued=max_queued,
        on_full=on_full,
        strategy=strategy,
        aging=aging,
        retries=retries,
        retry_on=retry_on,  # type: ignore[arg-type]  # made a tuple, and checked, by _Settings
        retry_backoff=retry_backoff,
        retry_backoff_max=retry_backoff_max,
        timeout=timeout,
        keep_finished=keep_finished,
        keep_finished_for=keep_finished_for,
        max_recoveries=max_recoveries,
        start=start,
    )
    shared = check_shared(is_dsn(path), name, workers, lease, settings)
    if shared is not None:
        try:
            from ._shared import serve_shared
        except ImportError as exc:
            raise ImportError(
                f"a pool on PostgreSQL needs psycopg ({exc}): install harnpool[postgres]"
            ) from exc
        async with serve_shared(path, settings, shared) as shared_pool:
            yield shared_pool
        return
    async with serve(JournalStorage(path, gather=settings.start == "eager"), settings) as pool:
        yield pool


def _check_supported(storage: Storage, settings: _Settings) -> None:
    if settings.strategy not in storage.strategies:
        raise ValueError(
            f"strategy={settings.strategy!r} is not supported by the storage at "
            f"{storage.path!r}; it supports {sorted(storage.strategies)}"
        )
    if settings.on_full not in storage.on_full:
        raise ValueError(
            f"on_full={settings.on_full!r} is not supported by the storage at "
            f"{storage.path!r}; it supports {sorted(storage.on_full)}"
        )


@asynccontextmanager
async def serve(storage: Storage, settings: _Settings) -> AsyncIterator[Pool]:
    """Open ``storage`` and run a pool on it for the block; see :func:`open_pool`."""
    _check_supported(storage, settings)
    found = await storage.open(
        max_concurrent=settings.max_concurrent,
        strategy=settings.strategy,
        keep_finished=settings.keep_finished,
        keep_finished_for=settings.keep_finished_for,
    )
    try:
        pool = Pool(storage, found, settings)
        opened_events(pool.recovery)
    except BaseException:
        # Nothing runs yet: give the lock back (recovering a task may import user code).
        with anyio.CancelScope(shield=True):
            await storage.aclose()
        raise
    # The block's own exception is re-raised after the task group, so callers
    # catch what they raised rather than an exception group around it.
    error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            pool._start(tg)
            try:
                try:
                    yield pool
                except BaseException as exc:
                    error = exc
                    await pool._abandon()
                else:
                    try:
                        await pool._drain()
                    except JournalWriteError as exc:
                        error = exc
            finally:
                storage.stop()
                tg.cancel_scope.cancel()
    finally:
        pool._tasks.closed = True
        # The writer thread may outlive the block by a moment: through the storage
        # it must not keep the pool, and the users' functions it holds, alive.
        storage.on_failure = None
        pool._tasks.wake_all()
        with anyio.CancelScope(shield=True):
            await storage.aclose()
        emit("info", "pool.closed", pool=found.path)
    if error is not None:
        raise error
