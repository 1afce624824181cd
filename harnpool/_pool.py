"""The pool: submit, dedupe by key, run on fixed workers, retry, cancel, wait, recover."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import math
import os
import random
import threading
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import msgspec

from ._cache import WeakCache
from ._errors import (
    JournalWriteError,
    PoolClosedError,
    QueueFull,
    ResultNotEncodableError,
    TaskCancelled,
    TaskCrashLoop,
    TaskFailed,
    TaskNotAttached,
    TaskRejected,
    UnknownTaskError,
    WaitDeadlock,
    WaitTimeout,
)
from ._events import emit
from ._info import PoolStatistics, RecoveryReport, TaskInfo
from ._journal import Batch, Journal, Opened, _threadsafe_caller, open_journal
from ._queue import ReadyQueue, Strategy
from ._records import FINISHED, Status, TaskRecord
from ._registry import decode_args, encode_args, lookup, registered_name
from ._settings import (
    OnFull,
    _retry_names,
    _Settings,
    _type_name,
    check_path,
    check_task_id,
    check_task_options,
    check_wait_timeout,
)

__all__ = ["Job", "OnFull", "Pool", "open_pool"]

TaskFunction = Callable[..., Awaitable[Any]] | Callable[..., Any]


class _Task:
    """A task's latest record plus what only this process knows about it."""

    __slots__ = ("args", "batch", "cancelling", "done", "exc", "fn", "record", "scope")

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
        #: The running attempt's cancel scope, and whether Pool.cancel asked to stop it.
        self.scope: anyio.CancelScope | None = None
        self.cancelling = False

    # What the ready queue orders by.
    @property
    def priority(self) -> int:
        return self.record.priority

    @property
    def seq(self) -> int:
        return self.record.seq

    @property
    def submitted_at(self) -> float:
        return self.record.submitted_at

    @property
    def group(self) -> str | None:
        return self.record.group


#: The pool and task whose attempt the current anyio task is running, if any.
_running: contextvars.ContextVar[tuple[Pool, _Task] | None] = contextvars.ContextVar(
    "harnpool_running", default=None
)


class _ThreadSlot:
    """One of a pool's thread slots, held for one sync function and released once.

    The event loop releases it if the function never started or has returned;
    if a timeout or cancel abandoned the thread while the function ran, the
    thread hands the release to the event loop when the function returns.
    """

    __slots__ = ("_abandoned", "_call_soon", "_finished", "_limiter", "_lock", "_started")

    def __init__(
        self,
        limiter: anyio.CapacityLimiter,
        call_soon: Callable[[Callable[[], object]], object] | None,
    ) -> None:
        self._limiter = limiter
        self._call_soon = call_soon
        self._lock = threading.Lock()
        self._started = False
        self._finished = False
        self._abandoned = False

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """In the worker thread: run ``fn(*args)`` unless the attempt was already given up."""
        if not self._begin():
            return None  # given up before it started: it must not run at all
        try:
            return fn(*args)
        finally:
            if self._end() and self._call_soon is not None:
                with contextlib.suppress(RuntimeError):  # the event loop has ended
                    self._call_soon(self.release)

    def _begin(self) -> bool:
        with self._lock:
            self._started = not self._abandoned
            return self._started

    def _end(self) -> bool:
        """Mark the function returned; True if the thread must release the slot."""
        with self._lock:
            self._finished = True
            return self._abandoned

    def abandon(self) -> None:
        """On the event loop: the attempt ended without the thread's result."""
        with self._lock:
            self._abandoned = True
            running = self._started and not self._finished
        if not running:
            self.release()

    def release(self) -> None:
        """On the event loop: give the slot back."""
        self._limiter.release_on_behalf_of(self)


def _qualified_name(obj: object) -> str:
    while isinstance(obj, functools.partial):
        obj = obj.func
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    # Only for people reading the journal: a lone surrogate must not make it unwritable.
    return _storable(f"{module}.{name}")


# Weak caches, not lru_caches: a cache must not keep a user's function (or the
# object behind a bound method) alive once nothing else refers to it.
_function_name = WeakCache[object, str](_qualified_name)


def _storable(text: str) -> str:
    """``text`` made writable as UTF-8: a lone surrogate becomes its escape."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error_message(exc: BaseException) -> str:
    """``str(exc)`` as the journal can store it, even when that raises."""
    try:
        return _storable(str(exc))
    except Exception:
        return f"<str() of the {type(exc).__qualname__} raised>"


def _check_function(fn: object) -> None:
    if callable(fn):
        return
    if inspect.iscoroutine(fn):
        fn.close()  # it will never run: spare the "never awaited" warning
        raise TypeError(
            "fn must be a function, given with its arguments, not a coroutine object: "
            "write pool.submit(fetch, url), not pool.submit(fetch(url))"
        )
    raise TypeError(f"fn must be callable, not {type(fn).__qualname__}")


#: What a task function may raise that stops the program, not just the task: an
#: interrupt, sys.exit(), or a worker coroutine being closed. They end the worker
#: (and so the pool) and leave the task ``running``, as a crash would have.
_STOPS = (KeyboardInterrupt, SystemExit, GeneratorExit)


def _native_cancels() -> int:
    """How many native cancellation requests the current asyncio task has pending.

    anyio's scopes on asyncio cancel through ``Task.cancel()`` too, and undo their
    own requests when they exit; what is left came from outside every scope.
    Trio has no cancellation outside its scopes: 0.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no asyncio loop running: anyio is on trio
        return 0
    return 0 if task is None else task.cancelling()


def _propagates(exc: BaseException, native: int) -> bool:
    """Whether an exception out of an attempt belongs to the worker rather than the task.

    A cancellation exception is the pool's or its host's only while a scope
    around the worker is cancelled (or past its deadline), or, on asyncio, while
    the worker's task holds more native cancellation requests than ``native``,
    the count when the attempt began. Otherwise the function raised it on its
    own (a cancelled future it awaited, a re-raised exception) and it fails the
    task like any other. The attempt's own scope has exited by now, so a
    cancellation the pool asked of the attempt is not counted here.
    """
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        if exc.subgroup(_STOPS) is not None:
            return True
        if exc.split(cancelled)[1] is not None:
            return False  # not all cancellations: the function's own failure
    elif isinstance(exc, _STOPS):
        return True
    elif not isinstance(exc, cancelled):
        return False
    return anyio.current_effective_deadline() <= anyio.current_time() or (
        _native_cancels() > native
    )


class Job:
    """One task for :meth:`Pool.submit_many`: a function, its arguments, and options.

    ``Job(fn, *args, key=..., priority=..., ...)`` means what
    ``pool.submit(fn, *args, key=..., priority=..., ...)`` means. The options
    are checked here, so a wrong one fails where the job is built; its
    attributes are read-only.

    Raises:
        TypeError: ``fn`` is a coroutine object or not callable, or an option
            has the wrong type (see :meth:`Pool.submit`).
        ValueError: An option is out of range (see :meth:`Pool.submit`).
    """

    # Read-only properties over private slots: checked once, a job is never changed.
    __slots__ = ("_args", "_fn", "_group", "_key", "_priority", "_retries", "_retry_on", "_timeout")

    def __init__(
        self,
        fn: TaskFunction,
        /,
        *args: Any,
        key: str | None = None,
        priority: int = 0,
        group: str | None = None,
        retries: int | None = None,
        retry_on: Iterable[type[BaseException]] | None = None,
        timeout: float | None = None,
    ) -> None:
        _check_function(fn)
        self._fn = fn
        self._args = args
        (
            self._key,
            self._priority,
            self._group,
            self._retries,
            self._retry_on,
            self._timeout,
        ) = check_task_options(key, priority, group, retries, retry_on, timeout)

    @property
    def fn(self) -> TaskFunction:
        """The function to run."""
        return self._fn

    @property
    def args(self) -> tuple[Any, ...]:
        """Its positional arguments."""
        return self._args

    @property
    def key(self) -> str | None:
        """The idempotency key, or None."""
        return self._key

    @property
    def priority(self) -> int:
        """The priority: higher runs first."""
        return self._priority

    @property
    def group(self) -> str | None:
        """The label the ``fair`` strategy round-robins between, or None."""
        return self._group

    @property
    def retries(self) -> int | None:
        """How many failed attempts are retried; None for the pool's default."""
        return self._retries

    @property
    def retry_on(self) -> tuple[type[BaseException], ...] | None:
        """The exception types retried; None for the pool's default."""
        return self._retry_on

    @property
    def timeout(self) -> float | None:
        """Seconds an attempt may run; None for the pool's default."""
        return self._timeout

    def __repr__(self) -> str:
        return f"Job({_qualified_name(self._fn)}, *{self._args!r}, key={self._key!r})"


def _check_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


#: Whether a function is awaited rather than run in a thread (asked per run).
_is_async = WeakCache[object, bool](_check_async)


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


_decoder_for = WeakCache[Callable[..., object], msgspec.json.Decoder[Any] | None](_result_decoder)


class Pool:
    """A durable pool of tasks. Make one with :func:`open_pool`."""

    def __init__(self, journal: Journal, opened: Opened, settings: _Settings) -> None:
        self._journal = journal
        self._settings = settings
        self._tasks: dict[str, _Task] = {}
        self._by_key: dict[str, str] = {}
        self._queued: dict[str, _Task] = {}  # every queued task, attached or not
        self._ready: ReadyQueue[_Task] = ReadyQueue(settings.strategy, aging=settings.aging)
        self._counts = dict.fromkeys(Status, 0)
        self._counter = opened.header.submit_counter
        #: Unfinished tasks whose function is known here: leaving the block waits for them.
        self._runnable = 0
        self._idle = anyio.Event()
        self._room = anyio.Event()
        self._bounded = settings.max_queued is not None
        self._retry_on = _retry_names(settings.retry_on)
        self._closed = False
        self._work_scope = anyio.CancelScope()
        self._tg: anyio.abc.TaskGroup | None = None
        # Threads running sync functions. A thread's slot is released when the
        # thread really returns, not when a timeout or cancel abandons it, so
        # abandoned threads cannot pile up past max_concurrent.
        self._threads = anyio.CapacityLimiter(settings.max_concurrent)
        self._thread_limiter = anyio.CapacityLimiter(settings.max_concurrent)
        self._call_soon: Callable[[Callable[[], object]], object] | None = None
        #: Workers are started as ready tasks need them (see _needs_worker).
        self._wanted = anyio.Event()
        self._workers = 0
        self._busy = 0
        #: For each running task blocked in wait(), the tasks it waits for.
        self._waits: dict[str, list[_Task]] = {}
        self._encoder = msgspec.json.Encoder()
        self._random = random.Random()
        for record in opened.tasks:
            task = _Task(record, None, ())
            self._tasks[record.id] = task
            if record.key is not None:
                self._by_key[record.key] = record.id
            self._counts[record.status] += 1
            if record.status is Status.QUEUED:
                self._queued[record.id] = task
        crash_looped = self._fail_crash_loops()
        resumed: list[str] = []
        unresolved: list[str] = []
        for task in self._queued.values():
            if task.record.name is not None:
                (resumed if self._resolve(task) else unresolved).append(task.record.id)
        queued = self._counts[Status.QUEUED]
        self.recovery = RecoveryReport(
            path=opened.path,
            created=opened.created,
            tasks=len(opened.tasks),
            requeued=tuple(i for i in opened.interrupted if i not in crash_looped),
            queued=queued,
            finished=len(opened.tasks) - queued,
            resumed=tuple(resumed),
            unresolved=tuple(unresolved),
            dropped_finished=opened.dropped,
            torn_tail=opened.torn,
            crash_looped=tuple(crash_looped),
        )
        journal.on_failure = self._on_failure

    def _fail_crash_loops(self) -> list[str]:
        """Record ``failed`` every queued task interrupted more than max_recoveries times.

        Every queued task is checked, not only those found running this time:
        if the process died again before the ``failed`` record was durable, the
        next open fails the task again rather than run it.
        """
        limit = self._settings.max_recoveries
        if limit is None:
            return []
        looped = [t for t in self._queued.values() if t.record.recoveries > limit]
        now = time.time()
        for task in looped:
            record = task.record
            error = TaskCrashLoop(
                task_id=record.id,
                key=record.key,
                recoveries=record.recoveries,
                max_recoveries=limit,
            )
            task.exc = error
            self._finish(
                task,
                msgspec.structs.replace(
                    record,
                    status=Status.FAILED,
                    finished_at=now,
                    not_before=None,
                    error_type=_type_name(TaskCrashLoop),
                    error_message=str(error),
                ),
            )
            emit(
                "error",
                "task.crash_loop",
                pool=self.path,
                task_id=record.id,
                key=record.key,
                recoveries=record.recoveries,
                max_recoveries=limit,
            )
        return [t.record.id for t in looped]

    def _resolve(self, task: _Task) -> bool:
        """Attach a recovered registered task's function and arguments, if known here."""
        record = task.record
        assert record.name is not None
        fn = lookup(record.name)
        if fn is None:
            emit(
                "warning",
                "task.unresolved",
                pool=self.path,
                task_id=record.id,
                key=record.key,
                name=record.name,
            )
            return False
        try:
            args = (
                () if isinstance(record.args, msgspec.UnsetType) else decode_args(fn, record.args)
            )
        except msgspec.ValidationError as exc:
            emit(
                "warning",
                "task.arguments_mismatch",
                pool=self.path,
                task_id=record.id,
                key=record.key,
                name=record.name,
                error=str(exc),
            )
            return False
        task.fn = fn
        task.args = args
        self._runnable += 1
        return True

    @property
    def path(self) -> str:
        """The journal's path."""
        return self._journal.path

    def __repr__(self) -> str:
        state = "closed" if self._closed else "failed" if self._journal.error else "open"
        c = self._counts
        return (
            f"<Pool {self.path!r} {state} max_concurrent={self._settings.max_concurrent} "
            f"queued={c[Status.QUEUED]} running={c[Status.RUNNING]} "
            f"completed={c[Status.COMPLETED]} failed={c[Status.FAILED]}>"
        )

    # -- submitting -------------------------------------------------------------------

    async def submit(
        self,
        fn: TaskFunction,
        /,
        *args: Any,
        key: str | None = None,
        priority: int = 0,
        group: str | None = None,
        retries: int | None = None,
        retry_on: Iterable[type[BaseException]] | None = None,
        timeout: float | None = None,
    ) -> str:
        """Submit ``fn(*args)`` to run, and return the task's id once that is durable.

        ``fn`` is an async function (awaited on a worker) or a plain function
        (run in a worker thread); pass the function and its arguments, not a
        coroutine object, since only a function can run again after a crash.
        A function registered with :func:`harnpool.task` is journaled by name
        with its arguments, and resumes on its own when the pool is reopened.

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

        Returns:
            The task's id.

        Raises:
            TypeError: ``fn`` is a coroutine object or not callable, or an
                option has the wrong type: ``key`` and ``group`` must be str or
                None, ``priority`` an int (not a bool), ``retries`` an int or
                None, ``retry_on`` an iterable of exception types or None,
                ``timeout`` a number or None. Nothing was written.
            ValueError: An option is out of range: a ``key`` or ``group`` that
                does not encode as UTF-8 (a lone surrogate), a ``priority`` or
                ``retries`` beyond 64 bits, ``retries`` below 0, a ``timeout``
                not finite or not above 0. Nothing was written.
            ArgumentsNotEncodableError: ``fn`` is registered and ``args`` cannot
                be stored; nothing was written.
            QueueFull: The queue is full and ``on_full`` is ``"reject"``.
            PoolClosedError: The pool is closed.
            JournalWriteError: The journal failed; the pool has stopped.
        """
        job = Job(
            fn,
            *args,
            key=key,
            priority=priority,
            group=group,
            retries=retries,
            retry_on=retry_on,
            timeout=timeout,
        )
        return (await self.submit_many([job]))[0]

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
        if isinstance(jobs, Job) or not isinstance(jobs, Iterable):
            raise TypeError(f"jobs must be an iterable of Job, not {type(jobs).__qualname__}")
        jobs = list(jobs)
        for job in jobs:
            if not isinstance(job, Job):
                raise TypeError(f"jobs must hold only Job objects, not {type(job).__qualname__}")
        prepared = [self._prepare(job) for job in jobs]  # every check before any write
        self._check_usable()
        tasks: list[_Task] = []
        try:
            for job, record in zip(jobs, prepared, strict=True):
                existing = self._existing(job)
                if existing is not None:
                    tasks.append(existing)
                    continue
                reason = None
                if self._bounded:
                    reason = await self._admit()
                    existing = self._existing(job)  # admit may have waited: look again
                    if existing is not None:
                        tasks.append(existing)
                        continue
                tasks.append(self._add(job, record, reason))
        finally:
            # Each new task is queued by its batch's callback once durable (see
            # _add), so a submitter cancelled here loses nothing: no shield needed.
            seen: Batch | None = None
            for task in tasks:
                batch = task.batch
                if batch is not None and batch is not seen:
                    seen = batch
                    if not batch.durable:
                        await batch.wait()
        return [task.record.id for task in tasks]

    def _prepare(self, job: Job) -> TaskRecord:
        """Check a job and build its record (id and seq are filled in later)."""
        settings = self._settings
        name = registered_name(job._fn)
        if name is not None and not name.isascii():
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"fn is registered under a name that cannot be stored: {name!r}"
                ) from None
        stored = encode_args(job._fn, job._args) if name is not None else msgspec.UNSET
        retry_on = self._retry_on if job._retry_on is None else _retry_names(job._retry_on)
        return TaskRecord(
            id="",
            seq=0,
            status=Status.QUEUED,
            submitted_at=0.0,
            priority=job._priority,
            key=job._key,
            function=_function_name(job._fn),
            name=name,
            args=stored,
            group=job._group,
            retries=settings.retries if job._retries is None else job._retries,
            retry_on=retry_on,
            timeout=settings.timeout if job._timeout is None else job._timeout,
        )

    def _existing(self, job: Job) -> _Task | None:
        if job._key is None:
            return None
        task_id = self._by_key.get(job._key)
        if task_id is None:
            return None
        task = self._tasks[task_id]
        if task.fn is None:
            if task.record.status is Status.QUEUED:
                self._attach(task, job._fn, job._args)
            else:
                # Finished: it never runs again, but its function's return
                # annotation now types the stored result for wait().
                task.fn = job._fn
        return task

    async def _admit(self) -> str | None:
        """Make room for one more queued task, as ``on_full`` says.

        Returns:
            None to queue the new task, or the reason to record it rejected.
        """
        limit = self._settings.max_queued
        if limit is None:
            return None
        while self._counts[Status.QUEUED] >= limit:
            policy = self._settings.on_full
            if policy == "reject":
                raise QueueFull(
                    f"the pool on {self.path!r} already holds max_queued={limit} queued tasks"
                )
            if policy == "drop_newest":
                return "drop_newest_queue_full"
            if policy == "drop_oldest":
                if self._ready.claimed:
                    # A worker is about to start a queued task, which makes room:
                    # dropping the oldest now would drop the very task it starts, and
                    # under a steady overload no task would ever run.
                    await anyio.lowlevel.checkpoint()
                    self._check_usable()
                    continue
                oldest = min(self._queued.values(), key=lambda t: t.record.seq)
                self._end(oldest, Status.REJECTED, reason="drop_oldest_queue_full")
                continue
            if self._room.is_set():
                self._room = anyio.Event()
            await self._room.wait()
            self._check_usable()
        return None

    def _add(self, job: Job, template: TaskRecord, reason: str | None) -> _Task:
        seq = self._counter + 1
        now = time.time()
        record = msgspec.structs.replace(template, id=f"t{seq}", seq=seq, submitted_at=now)
        if reason is not None:
            record = msgspec.structs.replace(
                record, status=Status.REJECTED, finished_at=now, reason=reason
            )
        # Appended first: if the record cannot be written, the pool's memory is unchanged.
        batch = self._journal.append(record)
        self._counter = seq
        task = _Task(record, job._fn, job._args)
        task.batch = batch
        self._tasks[record.id] = task
        if job._key is not None:
            self._by_key[job._key] = record.id
        self._counts[record.status] += 1
        if reason is None:
            # Queued once durable, whatever becomes of the submitter meanwhile.
            batch.on_durable.append(functools.partial(self._put_ready, task))
            self._queued[record.id] = task
            self._runnable += 1
            emit("info", "task.submitted", pool=self.path, task_id=record.id, key=record.key)
        else:
            emit(
                "warning",
                "task.rejected",
                pool=self.path,
                task_id=record.id,
                key=record.key,
                reason=reason,
            )
        return task

    def _attach(self, task: _Task, fn: TaskFunction, args: tuple[Any, ...]) -> None:
        task.fn = fn
        task.args = args
        self._runnable += 1
        self._enqueue(task)

    def _enqueue(self, task: _Task) -> None:
        due = task.record.not_before
        delay = 0.0 if due is None else due - time.time()
        if delay > 0 and self._tg is not None:
            self._tg.start_soon(self._enqueue_later, task, delay)
        else:
            self._put_ready(task)

    async def _enqueue_later(self, task: _Task, delay: float) -> None:
        await anyio.sleep(delay)
        self._put_ready(task)

    def _put_ready(self, task: _Task) -> None:
        if task.record.status is not Status.QUEUED:
            return  # dropped or cancelled before it was durable, or while it waited to be due
        self._ready.put(task)
        if self._needs_worker():
            self._wanted.set()  # callable from a batch's callback, outside any task

    def _needs_worker(self) -> bool:
        """Whether another worker should start: one idle worker beyond the ready tasks.

        An idle worker waits in the ready queue and takes at most one task, so
        while there are as many ready tasks as idle workers none is to spare.
        The spare one is already waiting when a task arrives, so starting a
        worker never delays a task. Which task a worker takes is still the
        queue's choice, so the strategy's order holds however many run.
        """
        return (
            self._workers < self._settings.max_concurrent
            and len(self._ready) >= self._workers - self._busy
        )

    # -- waiting and cancelling -------------------------------------------------------

    async def wait(self, task_id: str, *, timeout: float | None = None) -> Any:
        """Wait for a task to finish and return its result.

        The result is decoded from the journal, as the task function's return
        annotation when this process knows the function, else as plain JSON
        types: it is the same value before and after a restart.

        Args:
            task_id: The task to wait for.
            timeout: Give up after this many seconds; the task is not affected.

        Returns:
            The task's result, once its ``completed`` record is durable.

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
        timeout = check_wait_timeout(timeout)
        task = self._get(check_task_id(task_id))
        self._check_usable()
        record = task.record
        if task.fn is None and record.status not in FINISHED:
            raise TaskNotAttached(task_id=record.id, key=record.key, function=record.function)
        running = _running.get()
        waiter = running[1] if running is not None and running[0] is self else None
        if waiter is not None:
            self._check_deadlock(waiter, task)
            self._waits.setdefault(waiter.record.id, []).append(task)
        try:
            if timeout is None:
                await self._finished(task)
            else:
                with anyio.move_on_after(timeout) as scope:
                    await self._finished(task)
                if scope.cancelled_caught:
                    raise WaitTimeout(task_id, timeout)
        finally:
            if waiter is not None:
                waits = self._waits[waiter.record.id]
                waits.remove(task)
                if not waits:
                    del self._waits[waiter.record.id]
        return self._outcome(task)

    def _check_deadlock(self, waiter: _Task, target: _Task) -> None:
        """Refuse a wait, from inside running task ``waiter``, that could never return."""
        if target.record.status in FINISHED:
            return
        blocked = [target]
        seen: set[str] = set()
        while blocked:
            task = blocked.pop()
            if task is waiter:
                reason = (
                    "a task cannot wait for itself"
                    if target is waiter
                    else f"task {target.record.id} waits, directly or through others, "
                    f"for task {waiter.record.id}"
                )
                raise WaitDeadlock(
                    task_id=target.record.id, waiter_id=waiter.record.id, reason=reason
                )
            if task.record.id not in seen:
                seen.add(task.record.id)
                blocked.extend(self._waits.get(task.record.id, ()))
        waiters = len(self._waits) + (waiter.record.id not in self._waits)
        limit = self._settings.max_concurrent
        # Once every slot holds a task blocked in wait() for unfinished tasks,
        # nothing can start or finish any more.
        if waiters >= limit and all(
            t.record.status not in FINISHED for waits in self._waits.values() for t in waits
        ):
            raise WaitDeadlock(
                task_id=target.record.id,
                waiter_id=waiter.record.id,
                reason=f"all max_concurrent={limit} slots would be held by tasks waiting "
                "on this pool, so no waited-for task could ever start",
            )

    async def _finished(self, task: _Task) -> None:
        while task.record.status not in FINISHED:
            if task.done is None:
                task.done = anyio.Event()
            await task.done.wait()
            self._check_usable()
        if task.batch is not None and not task.batch.durable:
            await task.batch.wait()

    def _outcome(self, task: _Task) -> Any:
        record = task.record
        if record.status is Status.COMPLETED:
            assert not isinstance(record.result, msgspec.UnsetType)
            fn = task.fn
            if fn is None and record.name is not None:
                fn = lookup(record.name)  # a registered function types its stored result too
            decoder = _plain_decoder if fn is None else _decoder_for(fn)
            if decoder is not None:
                with contextlib.suppress(msgspec.ValidationError):
                    return decoder.decode(record.result)
                # the annotation does not describe what was returned: plain JSON
            return _plain_decoder.decode(record.result)
        if record.status is Status.CANCELLED:
            raise TaskCancelled(task_id=record.id, key=record.key)
        if record.status is Status.REJECTED:
            raise TaskRejected(task_id=record.id, key=record.key, reason=record.reason or "")
        raise TaskFailed(
            task_id=record.id,
            key=record.key,
            error_type=record.error_type or "",
            error_message=record.error_message or "",
        ) from task.exc

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
        task = self._get(check_task_id(task_id))
        self._check_usable()
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
            self._end(task, Status.CANCELLED, reason="cancelled")
        else:
            task.cancelling = True
            scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._finished(task)
        return task.record.status is Status.CANCELLED

    def _stopping(self) -> bool:
        """Whether the pool has begun to stop without draining, or has drained."""
        return self._work_scope.cancel_called or (
            self._tg is not None and self._tg.cancel_scope.cancel_called
        )

    # -- introspection ---------------------------------------------------------------

    def info(self, task_id: str) -> TaskInfo:
        """Return a snapshot of one task.

        Raises:
            TypeError: ``task_id`` is not a str.
            UnknownTaskError: No task has this id.
        """
        return self._info(self._get(check_task_id(task_id)))

    def tasks(self) -> list[TaskInfo]:
        """Return a snapshot of every task the pool knows, in submission order."""
        return [self._info(task) for task in self._tasks.values()]

    def statistics(self) -> PoolStatistics:
        """Return the pool's counts of tasks by status."""
        c = self._counts
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
            waiting_for_function=c[Status.QUEUED] + c[Status.RUNNING] - self._runnable,
            flushes=self._journal.flushes,
            workers=self._workers,
            threads=self._threads.borrowed_tokens,
        )

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
            name=r.name,
            group=r.group,
            retries=r.retries,
            timeout=r.timeout,
            not_before=r.not_before,
            reason=r.reason,
            recoveries=r.recoveries,
        )

    # -- transitions ------------------------------------------------------------------

    def _set_status(self, task: _Task, record: TaskRecord) -> Batch:
        old = task.record.status
        self._counts[old] -= 1
        self._counts[record.status] += 1
        task.record = record
        if old is Status.QUEUED and record.status is not Status.QUEUED:
            del self._queued[record.id]
            if self._bounded:
                self._room.set()
        elif record.status is Status.QUEUED and old is not Status.QUEUED:
            self._queued[record.id] = task
        return self._journal.append(record)

    def _finish(self, task: _Task, record: TaskRecord) -> None:
        attached = task.fn is not None
        task.batch = self._set_status(task, record)
        task.args = ()
        if attached:
            self._runnable -= 1
            if self._runnable == 0:
                self._idle.set()
        if task.done is not None:
            # Wake waiters once the final record is durable: one wake-up, not two.
            task.batch.on_durable.append(task.done.set)

    def _end(self, task: _Task, status: Status, *, reason: str) -> None:
        """Record a task cancelled or rejected without a (further) run."""
        self._finish(
            task,
            msgspec.structs.replace(
                task.record, status=status, finished_at=time.time(), reason=reason
            ),
        )
        level = "info" if status is Status.CANCELLED else "warning"
        record = task.record
        emit(
            level,
            f"task.{status.value}",
            pool=self.path,
            task_id=record.id,
            key=record.key,
            reason=reason,
        )

    def _failed_attempt(self, task: _Task, exc: BaseException, now: float) -> None:
        record = task.record
        error_type = _storable(_type_name(type(exc)))
        message = _error_message(exc)
        error = {"error_type": error_type, "error_message": message}
        # Runs a crash interrupted are not failures: they do not use up retries.
        failures = record.attempts - record.recoveries
        if failures <= record.retries and self._retryable(record, exc):
            backoff = self._settings.retry_backoff * 2 ** (failures - 1)
            delay = min(self._settings.retry_backoff_max, backoff)
            delay *= 0.5 + self._random.random() / 2  # "equal jitter": spreads a burst out
            task.batch = self._set_status(
                task,
                msgspec.structs.replace(
                    record, status=Status.QUEUED, started_at=None, not_before=now + delay, **error
                ),
            )
            emit(
                "warning",
                "task.retry_scheduled",
                pool=self.path,
                task_id=record.id,
                key=record.key,
                attempt=record.attempts,
                delay=round(delay, 3),
                error=f"{error_type}: {message}",
            )
            self._enqueue(task)
            return
        task.exc = exc
        self._finish(
            task, msgspec.structs.replace(record, status=Status.FAILED, finished_at=now, **error)
        )
        emit(
            "warning",
            "task.failed",
            pool=self.path,
            task_id=record.id,
            key=record.key,
            attempts=record.attempts,
            error=f"{error_type}: {message}",
        )

    @staticmethod
    def _retryable(record: TaskRecord, exc: BaseException) -> bool:
        if record.retry_on is None:
            return isinstance(exc, Exception)
        names = {_type_name(cls) for cls in type(exc).__mro__}
        return not names.isdisjoint(record.retry_on)

    # -- running ----------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            task = await self._ready.get()
            record = task.record
            fn = task.fn
            if record.status is not Status.QUEUED or fn is None:
                continue  # cancelled or rejected while it waited in the queue
            self._busy += 1
            if self._needs_worker():
                self._wanted.set()  # this worker was the spare one
            try:
                await self._run_task(task, fn)
            finally:
                self._busy -= 1

    async def _run_task(self, task: _Task, fn: TaskFunction) -> None:
        record = task.record
        # The "running" record rides with the next flush: nobody is told a
        # task started, and a crash before it is durable just runs it again.
        started = self._set_status(
            task,
            msgspec.structs.replace(
                record,
                status=Status.RUNNING,
                started_at=time.time(),
                attempts=record.attempts + 1,
                not_before=None,
            ),
        )
        emit("debug", "task.started", pool=self.path, task_id=record.id, key=record.key)
        # A registered task resumes on its own after a crash, so a function that
        # kills its process would run again at every open: its "running" record
        # must be durable before it runs, for the crash to be counted.
        if (
            record.name is not None
            and self._settings.max_recoveries is not None
            and not await self._started(task, started)
        ):
            return
        token = _running.set((self, task))
        try:
            await self._attempt(task, fn)
        finally:
            _running.reset(token)

    async def _started(self, task: _Task, batch: Batch) -> bool:
        """Wait until a task's ``running`` record is durable; False if it must not run."""
        # Pool.cancel stops a running task through its scope, even this early.
        task.scope = scope = anyio.CancelScope()
        try:
            with scope:
                await batch.wait()
        except JournalWriteError:
            return False  # the pool has stopped, and every waiter was told why
        finally:
            task.scope = None
        if scope.cancelled_caught:
            self._end(task, Status.CANCELLED, reason="cancelled")
            return False
        return True

    async def _run_in_thread(
        self,
        fn: TaskFunction,
        args: tuple[Any, ...],
        scope: anyio.CancelScope,
        timeout: float | None,
    ) -> Any:
        """Run a sync function in a thread that holds one of the pool's thread slots.

        A thread cannot be interrupted: a timeout or cancel abandons it, but its
        slot is held until the function really returns, so at most
        max_concurrent threads ever run the pool's functions. The attempt's
        timeout counts from the moment the thread has its slot.
        """
        slot = _ThreadSlot(self._threads, self._call_soon)
        scope.deadline = math.inf  # waiting for a slot is not part of the attempt's time
        await self._threads.acquire_on_behalf_of(slot)
        if timeout is not None:
            scope.deadline = anyio.current_time() + timeout
        try:
            value = await anyio.to_thread.run_sync(
                functools.partial(slot.run, fn, args),
                limiter=self._thread_limiter,
                abandon_on_cancel=True,
            )
        except BaseException:
            slot.abandon()
            raise
        slot.release()
        return value

    async def _attempt(self, task: _Task, fn: TaskFunction) -> None:
        timeout = task.record.timeout
        task.scope = scope = anyio.CancelScope(
            deadline=math.inf if timeout is None else anyio.current_time() + timeout
        )
        native = _native_cancels()
        value: Any = None
        try:
            with scope:
                if _is_async(fn):
                    value = await fn(*task.args)
                else:
                    value = await self._run_in_thread(fn, task.args, scope, timeout)
        except BaseException as exc:
            if _propagates(exc, native):
                raise
            self._attempt_raised(task, scope, exc)
            return
        finally:
            task.scope = None
            cancelling, task.cancelling = task.cancelling, False
        now = time.time()
        if scope.cancelled_caught:
            if cancelling:
                self._end(task, Status.CANCELLED, reason="cancelled")
            else:
                self._failed_attempt(task, self._expired(task), now)
            return
        try:
            raw = msgspec.Raw(self._encoder.encode(value))
        except Exception as exc:  # also RecursionError, and errors from code msgspec calls
            error = ResultNotEncodableError(
                f"task {task.record.id} returned a {_type_name(type(value))}, "
                f"which cannot be stored as JSON: {_error_message(exc)}"
            )
            error.__cause__ = exc
            task.exc = error
            self._finish(
                task,
                msgspec.structs.replace(
                    task.record,
                    status=Status.FAILED,
                    finished_at=now,
                    error_type=_type_name(type(error)),
                    error_message=str(error),
                ),
            )
            return
        self._finish(
            task,
            msgspec.structs.replace(
                task.record,
                status=Status.COMPLETED,
                finished_at=now,
                result=raw,
                args=msgspec.UNSET,
            ),
        )
        emit("debug", "task.completed", pool=self.path, task_id=task.record.id, key=task.record.key)

    def _attempt_raised(self, task: _Task, scope: anyio.CancelScope, exc: BaseException) -> None:
        """Record the end of an attempt whose function raised ``exc``, the task's own."""
        if task.cancelling:
            # Whatever the function made of the cancellation (or raised just
            # before it arrived), cancel() was asked first: never a retry.
            self._end(task, Status.CANCELLED, reason="cancelled")
        elif scope.cancel_called and isinstance(exc, anyio.get_cancelled_exc_class()):
            # The timeout's cancellation, re-raised as an exception anyio does not know.
            self._failed_attempt(task, self._expired(task), time.time())
        else:
            self._failed_attempt(task, exc, time.time())

    @staticmethod
    def _expired(task: _Task) -> TimeoutError:
        record = task.record
        return TimeoutError(
            f"attempt {record.attempts} of task {record.id} "
            f"ran longer than its timeout of {record.timeout} seconds"
        )

    async def _run_workers(self) -> None:
        with self._work_scope:
            async with anyio.create_task_group() as tg:
                while True:
                    self._wanted = anyio.Event()
                    while self._needs_worker():
                        self._workers += 1
                        tg.start_soon(self._work)
                    await self._wanted.wait()

    def _start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self._call_soon = _threadsafe_caller()
        tg.start_soon(self._journal.run)
        tg.start_soon(self._run_workers)
        for task in self._queued.values():
            if task.fn is not None:
                self._enqueue(task)

    def _wake_all(self) -> None:
        self._idle.set()
        self._room.set()
        for task in self._tasks.values():
            if task.done is not None:
                task.done.set()

    def _on_failure(self, error: JournalWriteError) -> None:
        emit("critical", "journal.write_failed", pool=self.path, error=str(error.__cause__))
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


def _opened_events(pool: Pool) -> None:
    report = pool.recovery
    if report.torn_tail is not None:
        torn = report.torn_tail
        emit(
            "warning",
            "journal.torn_tail",
            pool=report.path,
            line=torn.line,
            offset=torn.offset,
            length=torn.length,
            reason=torn.reason,
        )
    emit(
        "info",
        "pool.opened",
        pool=report.path,
        created=report.created,
        tasks=report.tasks,
        requeued=len(report.requeued),
        queued=report.queued,
        resumed=len(report.resumed),
        unresolved=len(report.unresolved),
        dropped_finished=report.dropped_finished,
    )


@asynccontextmanager
async def open_pool(
    path: str | os.PathLike[str],
    *,
    max_concurrent: int = 1,
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
) -> AsyncIterator[Pool]:
    """Open (or create) the durable pool whose journal is at ``path``.

    Opening locks the journal, replays it, and compacts it: tasks a crash
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
        max_concurrent: How many tasks may run at once; that many workers run.
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
        keep_finished: Keep at most this many finished tasks when the journal
            is compacted on open (the newest ones); None keeps all. The keys
            of dropped tasks no longer deduplicate.
        keep_finished_for: Drop finished tasks older than this many seconds
            when the journal is compacted on open.
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
            seconds are ints or floats; ``on_full`` and ``strategy`` are str;
            ``retry_on`` is an iterable of exception types.
        ValueError: A setting is out of range: counts below their minimum or
            beyond 64 bits, seconds negative (or 0 for ``aging`` and
            ``timeout``), NaN or infinite, ``retry_backoff_max`` below
            ``retry_backoff``, an unknown ``on_full`` or ``strategy``, or an
            empty ``path`` or one holding a NUL.

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
    )
    opened = await anyio.to_thread.run_sync(
        functools.partial(
            open_journal,
            path,
            max_concurrent=settings.max_concurrent,
            strategy=settings.strategy,
            keep_finished=settings.keep_finished,
            keep_finished_for=settings.keep_finished_for,
        )
    )
    journal = Journal(opened)
    try:
        pool = Pool(journal, opened, settings)
        _opened_events(pool)
    except BaseException:
        # Nothing runs yet: give the lock back (recovering a task may import user code).
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(journal.close)
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
                journal.stop()
                tg.cancel_scope.cancel()
    finally:
        pool._closed = True
        # The writer thread may outlive the block by a moment: through the journal
        # it must not keep the pool, and the users' functions it holds, alive.
        journal.on_failure = None
        pool._wake_all()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(journal.close)
        emit("info", "pool.closed", pool=opened.path)
    if error is not None:
        raise error
