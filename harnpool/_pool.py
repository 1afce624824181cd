"""The pool: submit, dedupe by key, run on fixed workers, wait, recover."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import structlog

from ._errors import (
    JournalWriteError,
    PoolClosedError,
    ResultNotEncodableError,
    TaskFailed,
    UnknownTaskError,
)
from ._info import PoolStatistics, RecoveryReport, TaskInfo
from ._journal import Batch, Journal, Opened, open_journal
from ._queue import ReadyQueue
from ._records import FINISHED, Status, TaskRecord

__all__ = ["Job", "Pool", "open_pool"]

_log = structlog.get_logger("harnpool")

TaskFunction = Callable[..., Awaitable[Any]] | Callable[..., Any]


class _Task:
    """A task's latest record plus what only this process knows about it."""

    __slots__ = ("args", "batch", "done", "exc", "fn", "record")

    def __init__(self, record: TaskRecord, fn: TaskFunction | None, args: tuple[Any, ...]) -> None:
        self.record = record
        self.fn = fn
        self.args = args
        #: The batch holding the latest record someone must not hear of before it is durable.
        self.batch: Batch | None = None
        #: Set when the task finishes (or the pool stops); made only when someone waits.
        self.done: anyio.Event | None = None
        #: The exception the function raised in this process, for ``TaskFailed.__cause__``.
        self.exc: BaseException | None = None


def _qualified_name(obj: object) -> str:
    while isinstance(obj, functools.partial):
        obj = obj.func
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}"


def _check_function(fn: object) -> None:
    if callable(fn):
        return
    if inspect.iscoroutine(fn):
        fn.close()  # it will never run: spare the "never awaited" warning
        raise TypeError(
            "submit() takes a function and its arguments, not a coroutine object: "
            "write pool.submit(fetch, url), not pool.submit(fetch(url))"
        )
    raise TypeError(f"submit() takes a callable, not {type(fn).__qualname__}")


class Job:
    """One task for :meth:`Pool.submit_many`: a function, its arguments, and options.

    ``Job(fn, *args, key=None, priority=0)`` means what
    ``pool.submit(fn, *args, key=key, priority=priority)`` means.
    """

    __slots__ = ("args", "fn", "key", "priority")

    def __init__(
        self, fn: TaskFunction, /, *args: Any, key: str | None = None, priority: int = 0
    ) -> None:
        self.fn = fn
        self.args = args
        self.key = key
        self.priority = priority

    def __repr__(self) -> str:
        return (
            f"Job({_qualified_name(self.fn)}, *{self.args!r}, key={self.key!r}, "
            f"priority={self.priority})"
        )


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


@functools.lru_cache(maxsize=256)
def _result_decoder(fn: Callable[..., object]) -> msgspec.json.Decoder[Any] | None:
    """A decoder for ``fn``'s return annotation, or None to decode plain JSON."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    try:
        hint = typing.get_type_hints(target).get("return", inspect.Signature.empty)
    except Exception:  # unresolvable annotations: fall back to plain JSON
        return None
    if hint is inspect.Signature.empty:
        return None
    if hint is None:
        hint = type(None)
    try:
        return msgspec.json.Decoder(hint)
    except TypeError:  # a type msgspec does not know
        return None


_plain_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def _decoder_for(fn: Callable[..., object]) -> msgspec.json.Decoder[Any] | None:
    try:
        return _result_decoder(fn)
    except TypeError:  # an unhashable callable object: nothing to cache it by
        return _result_decoder.__wrapped__(fn)


class Pool:
    """A durable pool of tasks. Make one with :func:`open_pool`."""

    def __init__(self, journal: Journal, opened: Opened, *, max_concurrent: int) -> None:
        self._journal = journal
        self._max_concurrent = max_concurrent
        self._tasks: dict[str, _Task] = {}
        self._by_key: dict[str, str] = {}
        self._ready: ReadyQueue[_Task] = ReadyQueue()
        self._counts = dict.fromkeys(Status, 0)
        self._counter = opened.header.submit_counter
        #: Unfinished tasks whose function is known here: leaving the block waits for them.
        self._runnable = 0
        self._idle = anyio.Event()
        self._closed = False
        self._work_scope = anyio.CancelScope()
        self._thread_limiter = anyio.CapacityLimiter(max_concurrent)
        self._encoder = msgspec.json.Encoder()
        for record in opened.tasks:
            self._tasks[record.id] = _Task(record, None, ())
            if record.key is not None:
                self._by_key[record.key] = record.id
            self._counts[record.status] += 1
        queued = self._counts[Status.QUEUED]
        self.recovery = RecoveryReport(
            path=opened.path,
            created=opened.created,
            tasks=len(opened.tasks),
            requeued=tuple(opened.interrupted),
            queued=queued,
            finished=len(opened.tasks) - queued,
            torn_tail=opened.torn,
        )
        journal.on_failure = self._on_failure

    @property
    def path(self) -> str:
        """The journal's path."""
        return self._journal.path

    def __repr__(self) -> str:
        state = "closed" if self._closed else "failed" if self._journal.error else "open"
        c = self._counts
        return (
            f"<Pool {self.path!r} {state} max_concurrent={self._max_concurrent} "
            f"queued={c[Status.QUEUED]} running={c[Status.RUNNING]} "
            f"completed={c[Status.COMPLETED]} failed={c[Status.FAILED]}>"
        )

    # -- public API -----------------------------------------------------------------

    async def submit(
        self,
        fn: TaskFunction,
        /,
        *args: Any,
        key: str | None = None,
        priority: int = 0,
    ) -> str:
        """Submit ``fn(*args)`` to run, and return the task's id once that is durable.

        ``fn`` is an async function (awaited on a worker) or a plain function
        (run in a worker thread); pass the function and its arguments, not a
        coroutine object, since only a function can run again after a crash.

        Args:
            fn: The function to run.
            *args: Its positional arguments (kept in memory only).
            key: The idempotency key. If a task with this key exists, in any
                status, its id is returned and nothing new runs. If that task
                was recovered from the journal and has not run yet, ``fn`` and
                ``args`` are attached to it, so it runs in its original place.
            priority: Higher runs first; equal priorities run in submission order.

        Returns:
            The task's id.

        Raises:
            TypeError: ``fn`` is a coroutine object or not callable.
            PoolClosedError: The pool is closed.
            JournalWriteError: The journal failed; the pool has stopped.
        """
        _check_function(fn)
        self._check_usable()
        task, new = self._register(fn, args, key, priority)
        if task.batch is not None:
            # Shielded: once appended the record will become durable, and a new
            # task must then be queued even if this submitter is cancelled meanwhile.
            with anyio.CancelScope(shield=True):
                await task.batch.wait()
        if new:
            self._ready.put(task, priority=priority, seq=task.record.seq)
        return task.record.id

    async def submit_many(self, jobs: Iterable[Job]) -> list[str]:
        """Submit several tasks with one durable write, and return their ids in order.

        Each :class:`Job` is handled as :meth:`submit` would handle it, keys
        deduplicated against the pool and within ``jobs``; the call returns
        once every new record is durable, after a single flush.

        Raises:
            TypeError: A job's function is a coroutine object or not callable;
                nothing was submitted.
            PoolClosedError: The pool is closed.
            JournalWriteError: The journal failed; the pool has stopped.
        """
        jobs = list(jobs)
        for job in jobs:
            _check_function(job.fn)
        self._check_usable()
        registered = [self._register(job.fn, job.args, job.key, job.priority) for job in jobs]
        batches = {id(task.batch): task.batch for task, _ in registered if task.batch is not None}
        with anyio.CancelScope(shield=True):
            for batch in batches.values():
                await batch.wait()
        for task, new in registered:
            if new:
                self._ready.put(task, priority=task.record.priority, seq=task.record.seq)
        return [task.record.id for task, _ in registered]

    async def wait(self, task_id: str) -> Any:
        """Wait for a task to finish and return its result.

        The result is decoded from the journal, as the task function's return
        annotation when this process knows the function, else as plain JSON
        types: it is the same value before and after a restart.

        Returns:
            The task's result, once its ``completed`` record is durable.

        Raises:
            UnknownTaskError: No task has this id.
            TaskFailed: The task's function raised (or returned a value that
                cannot be stored).
            PoolClosedError: The pool closed before the task finished.
            JournalWriteError: The journal failed; the pool has stopped.
        """
        task = self._get(task_id)
        self._check_usable()
        while task.record.status not in FINISHED:
            if task.done is None:
                task.done = anyio.Event()
            await task.done.wait()
            self._check_usable()
        if task.batch is not None:
            await task.batch.wait()
        record = task.record
        if record.status is Status.COMPLETED:
            assert not isinstance(record.result, msgspec.UnsetType)
            decoder = _plain_decoder if task.fn is None else _decoder_for(task.fn)
            if decoder is not None:
                try:
                    return decoder.decode(record.result)
                except msgspec.ValidationError:
                    pass  # the annotation does not describe what was returned
            return _plain_decoder.decode(record.result)
        raise TaskFailed(
            task_id=record.id,
            key=record.key,
            error_type=record.error_type or "",
            error_message=record.error_message or "",
        ) from task.exc

    def info(self, task_id: str) -> TaskInfo:
        """Return a snapshot of one task.

        Raises:
            UnknownTaskError: No task has this id.
        """
        return self._info(self._get(task_id))

    def tasks(self) -> list[TaskInfo]:
        """Return a snapshot of every task the pool knows, in submission order."""
        return [self._info(task) for task in self._tasks.values()]

    def statistics(self) -> PoolStatistics:
        """Return the pool's counts of tasks by status."""
        c = self._counts
        return PoolStatistics(
            max_concurrent=self._max_concurrent,
            queued=c[Status.QUEUED],
            running=c[Status.RUNNING],
            completed=c[Status.COMPLETED],
            failed=c[Status.FAILED],
            rejected=c[Status.REJECTED],
            cancelled=c[Status.CANCELLED],
            waiting_for_function=c[Status.QUEUED] + c[Status.RUNNING] - self._runnable,
            flushes=self._journal.flushes,
        )

    # -- internals ------------------------------------------------------------------

    def _get(self, task_id: str) -> _Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise UnknownTaskError(task_id) from None

    def _check_usable(self) -> None:
        if self._journal.error is not None:
            raise self._journal.error
        if self._closed:
            raise PoolClosedError(f"the pool on {self.path!r} is closed")

    def _info(self, task: _Task) -> TaskInfo:
        r = task.record
        return TaskInfo(
            id=r.id,
            key=r.key,
            priority=r.priority,
            seq=r.seq,
            status=r.status,
            function=r.function,
            attached=task.fn is not None,
            attempts=r.attempts,
            submitted_at=r.submitted_at,
            started_at=r.started_at,
            finished_at=r.finished_at,
            error_type=r.error_type,
            error_message=r.error_message,
        )

    def _register(
        self, fn: TaskFunction, args: tuple[Any, ...], key: str | None, priority: int
    ) -> tuple[_Task, bool]:
        """Find the task for ``key`` or append a new one; True if it is new.

        A new task goes into the ready queue only once its record is durable.
        """
        if key is not None:
            existing = self._by_key.get(key)
            if existing is not None:
                task = self._tasks[existing]
                if task.fn is None:
                    if task.record.status is Status.QUEUED:
                        self._attach(task, fn, args)
                    else:
                        # Finished: it never runs again, but its function's return
                        # annotation now types the stored result for wait().
                        task.fn = fn
                return task, False
        self._counter += 1
        seq = self._counter
        record = TaskRecord(
            id=f"t{seq}",
            seq=seq,
            status=Status.QUEUED,
            submitted_at=time.time(),
            priority=priority,
            key=key,
            function=_qualified_name(fn),
        )
        task = _Task(record, fn, args)
        self._tasks[record.id] = task
        if key is not None:
            self._by_key[key] = record.id
        self._counts[Status.QUEUED] += 1
        self._runnable += 1
        task.batch = self._journal.append(record)
        return task, True

    def _attach(self, task: _Task, fn: TaskFunction, args: tuple[Any, ...]) -> None:
        task.fn = fn
        task.args = args
        self._runnable += 1
        self._ready.put(task, priority=task.record.priority, seq=task.record.seq)

    def _set_status(self, task: _Task, record: TaskRecord) -> Batch:
        self._counts[task.record.status] -= 1
        self._counts[record.status] += 1
        task.record = record
        return self._journal.append(record)

    def _finish(self, task: _Task, record: TaskRecord) -> None:
        task.batch = self._set_status(task, record)
        task.args = ()
        self._runnable -= 1
        if self._runnable == 0:
            self._idle.set()
        if task.done is not None:
            task.done.set()

    def _fail(self, task: _Task, exc: BaseException, now: float) -> None:
        task.exc = exc
        cls = type(exc)
        self._finish(
            task,
            msgspec.structs.replace(
                task.record,
                status=Status.FAILED,
                finished_at=now,
                error_type=f"{cls.__module__}.{cls.__qualname__}",
                error_message=str(exc),
            ),
        )

    async def _work(self) -> None:
        while True:
            task = await self._ready.get()
            record = task.record
            fn = task.fn
            if record.status is not Status.QUEUED or fn is None:
                continue
            # The "running" record rides with the next flush: nobody is told a
            # task started, and a crash before it is durable just runs it again.
            self._set_status(
                task,
                msgspec.structs.replace(
                    record,
                    status=Status.RUNNING,
                    started_at=time.time(),
                    attempts=record.attempts + 1,
                ),
            )
            try:
                if _is_async(fn):
                    value = await fn(*task.args)
                else:
                    value = await anyio.to_thread.run_sync(
                        functools.partial(fn, *task.args), limiter=self._thread_limiter
                    )
            except Exception as exc:
                self._fail(task, exc, time.time())
                continue
            now = time.time()
            try:
                raw = msgspec.Raw(self._encoder.encode(value))
            except (TypeError, msgspec.EncodeError, OverflowError) as exc:
                error = ResultNotEncodableError(
                    f"task {task.record.id} returned a {type(value).__module__}."
                    f"{type(value).__qualname__}, which cannot be stored as JSON: {exc}"
                )
                error.__cause__ = exc
                self._fail(task, error, now)
                continue
            self._finish(
                task,
                msgspec.structs.replace(
                    task.record, status=Status.COMPLETED, finished_at=now, result=raw
                ),
            )

    async def _run_workers(self) -> None:
        with self._work_scope:
            async with anyio.create_task_group() as tg:
                for _ in range(self._max_concurrent):
                    tg.start_soon(self._work)

    def _wake_all(self) -> None:
        self._idle.set()
        for task in self._tasks.values():
            if task.done is not None:
                task.done.set()

    def _on_failure(self, error: JournalWriteError) -> None:
        _log.error("journal.write_failed", path=self.path, error=str(error.__cause__))
        self._work_scope.cancel()
        self._wake_all()

    async def _drain(self) -> None:
        while self._runnable and self._journal.error is None:
            self._idle = anyio.Event()
            await self._idle.wait()
        await self._journal.flush()

    async def _abandon(self) -> None:
        """Stop running tasks (they stay ``running`` in the journal) and flush."""
        self._work_scope.cancel()
        with anyio.CancelScope(shield=True):
            # A journal failure was already reported to every waiter; the block's own error goes on.
            with contextlib.suppress(JournalWriteError):
                await self._journal.flush()


@asynccontextmanager
async def open_pool(
    path: str | os.PathLike[str],
    *,
    max_concurrent: int = 1,
) -> AsyncIterator[Pool]:
    """Open (or create) the durable pool whose journal is at ``path``.

    Opening locks the journal, replays it, and compacts it: tasks a crash
    interrupted while running are queued again at their original place, queued
    tasks stay queued, and finished tasks keep their results. Recovered tasks
    run once their function is known again: submit with the same key.

    Leaving the block normally waits for every task whose function is known to
    finish. Leaving it by an exception or cancellation cancels running tasks;
    they stay ``running`` in the journal and are resumed like crashed ones on the
    next open. Either way the lock is released.

    Args:
        path: The journal file. Its directory must exist. ``<path>.lock`` and,
            briefly, ``<path>.compact`` are made beside it.
        max_concurrent: How many tasks may run at once; that many workers run.

    Yields:
        The open pool; :attr:`Pool.recovery` says what opening found.

    Raises:
        JournalLockedError: Another pool holds the journal.
        JournalCorruptError: The journal cannot be trusted; it was not changed.
        JournalVersionError: A newer harnpool wrote the journal.
        JournalWriteError: The journal failed while the pool was open.
        ValueError: ``max_concurrent`` is less than 1.
    """
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
    opened = await anyio.to_thread.run_sync(
        functools.partial(open_journal, path, max_concurrent=max_concurrent)
    )
    journal = Journal(opened)
    pool = Pool(journal, opened, max_concurrent=max_concurrent)
    if opened.torn is not None:
        torn = opened.torn
        _log.warning(
            "journal.torn_tail",
            path=opened.path,
            line=torn.line,
            offset=torn.offset,
            length=torn.length,
            reason=torn.reason,
        )
    # The block's own exception is re-raised after the task group, so callers
    # catch what they raised rather than an exception group around it.
    error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            tg.start_soon(pool._run_workers)
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
            tg.cancel_scope.cancel()
    finally:
        pool._closed = True
        pool._wake_all()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(journal.close)
    if error is not None:
        raise error
