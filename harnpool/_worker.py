"""The workers: started as ready tasks need them, each running one attempt at a time."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import msgspec

from ._context import attempt_context, run_in
from ._errors import JournalWriteError, ResultNotEncodableError
from ._events import emit
from ._loop import threadsafe_caller
from ._records import Status
from ._results import error_message
from ._settings import _type_name
from ._storage import Durable
from ._task import Task, TaskFunction, is_async
from ._threads import thread_slots
from ._transitions import Tasks

__all__ = ["Workers"]


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


class Workers:
    """Up to max_concurrent workers taking tasks from the ready queue, one attempt each."""

    def __init__(self, tasks: Tasks) -> None:
        self.tasks = tasks
        self.settings = tasks.settings
        self.path = tasks.path
        self.scope = anyio.CancelScope()
        # Threads running sync functions. A thread's slot is released when the
        # thread really returns, not when a timeout or cancel abandons it, so
        # abandoned threads cannot pile up past the limit.
        slots = thread_slots(self.settings.max_concurrent)
        self.threads = anyio.CapacityLimiter(slots)
        self._thread_limiter = anyio.CapacityLimiter(slots)
        self._call_soon: Callable[[Callable[[], object]], object] | None = None
        #: Workers are started as ready tasks need them (see needs_worker).
        self._wanted = tasks.prims.event()
        self.count = 0
        self._busy = 0
        self._encoder = msgspec.json.Encoder()
        tasks.wake_worker = self.wake

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._call_soon = threadsafe_caller()
        tg.start_soon(self._run)

    def wake(self) -> None:
        if self.needs_worker():
            self._wanted.set()

    def needs_worker(self) -> bool:
        """Whether another worker should start: one idle worker beyond the ready tasks.

        An idle worker waits in the ready queue and takes at most one task, so
        while there are as many ready tasks as idle workers none is to spare.
        The spare one is already waiting when a task arrives, so starting a
        worker never delays a task. Which task a worker takes is still the
        queue's choice, so the strategy's order holds however many run.
        """
        return (
            self.count < self.settings.max_concurrent
            and len(self.tasks.ready) >= self.count - self._busy
        )

    async def _run(self) -> None:
        with self.scope:
            async with anyio.create_task_group() as tg:
                while True:
                    self._wanted = self.tasks.prims.event()
                    while self.needs_worker():
                        self.count += 1
                        tg.start_soon(self._work)
                    await self._wanted.wait()

    async def _work(self) -> None:
        ready = self.tasks.ready
        while True:
            # One cancel scope serves a worker's attempts one after another, until
            # one is cancelled (by Pool.cancel or its timeout) or its function
            # raises: entering a fresh scope per attempt costs more than a short
            # task's whole attempt. The scope is the attempt's only while
            # task.scope points to it; between attempts nobody cancels it.
            scope = anyio.CancelScope()
            current: Task | None = None
            native = 0
            try:
                with scope:
                    while not scope.cancel_called:
                        task = await ready.get()
                        fn = task.fn
                        if task.record.status is not Status.QUEUED or fn is None:
                            continue  # cancelled or rejected while it waited in the queue
                        self._busy += 1
                        if self.needs_worker():
                            self._wanted.set()  # this worker was the spare one
                        try:
                            if not await self._begin(task):
                                continue
                            current = task
                            native = _native_cancels()
                            value = await self._attempt_in(task, fn, scope)
                            current = None
                            self._returned(task, value, time.time())
                        finally:
                            self._busy -= 1
            except BaseException as exc:
                if current is None:
                    raise  # not an attempt's: the pool is stopping
                if _propagates(exc, native):
                    current.cancelling = False
                    raise
                self._attempt_raised(current, scope, exc)
                continue
            if current is not None:
                # The scope caught its own cancellation, which ended the attempt.
                self._cancelled(current, time.time())

    async def _begin(self, task: Task) -> bool:
        """Record that ``task`` starts an attempt; False if it must not run after all."""
        record = task.record
        # The "running" record rides with the next flush: nobody is told a
        # task started, and a crash before it is durable just runs it again.
        started = self.tasks.set_status(
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
        return (
            record.name is None
            or self.settings.max_recoveries is None
            or await self._started(task, started)
        )

    async def _attempt_in(self, task: Task, fn: TaskFunction, scope: anyio.CancelScope) -> Any:
        """Run one attempt of ``task`` in the worker's ``scope`` and return its value.

        Whatever ends the attempt otherwise propagates, for the scope (a
        cancellation of its own) or :meth:`_work` to judge.
        """
        timeout = task.record.timeout
        if timeout is not None:
            scope.deadline = anyio.current_time() + timeout
        task.scope = scope
        try:
            return await self._invoke(task, fn, scope, timeout)
        finally:
            task.scope = None
            if timeout is not None:
                scope.deadline = math.inf

    async def _invoke(
        self, task: Task, fn: TaskFunction, scope: anyio.CancelScope, timeout: float | None
    ) -> Any:
        """Call the task's function: awaited if async, else in a thread slot.

        Either way it runs in its own copy of the submitter's context (on this
        worker's task, or in the thread): nothing it sets outlives the attempt.
        """
        context = attempt_context(self.tasks, task)
        if is_async(fn):
            coro: Any = context.run(fn, *task.args)
            return await run_in(context, coro)
        return await self._run_in_thread(
            functools.partial(context.run, fn), task.args, scope, timeout
        )

    async def _started(self, task: Task, batch: Durable) -> bool:
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
            self.tasks.end(task, Status.CANCELLED, reason="cancelled")
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
        ``thread_slots(max_concurrent)`` threads ever run the pool's functions.
        The attempt's timeout counts from the moment the thread has its slot.
        """
        slot = _ThreadSlot(self.threads, self._call_soon)
        scope.deadline = math.inf  # waiting for a slot is not part of the attempt's time
        await self.threads.acquire_on_behalf_of(slot)
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

    async def _attempt(self, task: Task, fn: TaskFunction) -> None:
        """Run one attempt of ``task`` in a scope of its own and record how it ended."""
        timeout = task.record.timeout
        task.scope = scope = anyio.CancelScope(
            deadline=math.inf if timeout is None else anyio.current_time() + timeout
        )
        native = _native_cancels()
        value: Any = None
        try:
            with scope:
                value = await self._invoke(task, fn, scope, timeout)
        except BaseException as exc:
            if _propagates(exc, native):
                task.cancelling = False
                raise
            self._attempt_raised(task, scope, exc)
            return
        finally:
            task.scope = None
        now = time.time()
        if scope.cancelled_caught:
            self._cancelled(task, now)
        else:
            self._returned(task, value, now)

    def _cancelled(self, task: Task, now: float) -> None:
        """Record an attempt its scope's cancellation ended: Pool.cancel's or its timeout's."""
        cancelling, task.cancelling = task.cancelling, False
        if cancelling:
            self.tasks.end(task, Status.CANCELLED, reason="cancelled")
        else:
            self.tasks.failed_attempt(task, self._expired(task), now)

    def _returned(self, task: Task, value: Any, now: float) -> None:
        """Record an attempt whose function returned ``value``."""
        task.cancelling = False
        try:
            raw = msgspec.Raw(self._encoder.encode(value))
        except Exception as exc:  # also RecursionError, and errors from code msgspec calls
            error = ResultNotEncodableError(
                f"task {task.record.id} returned a {_type_name(type(value))}, "
                f"which cannot be stored as JSON: {error_message(exc)}"
            )
            error.__cause__ = exc
            task.exc = error
            self.tasks.finish(
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
        self.tasks.finish(
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

    def _attempt_raised(self, task: Task, scope: anyio.CancelScope, exc: BaseException) -> None:
        """Record the end of an attempt whose function raised ``exc``, the task's own."""
        cancelling, task.cancelling = task.cancelling, False
        if cancelling:
            # Whatever the function made of the cancellation (or raised just
            # before it arrived), cancel() was asked first: never a retry.
            self.tasks.end(task, Status.CANCELLED, reason="cancelled")
        elif scope.cancel_called and isinstance(exc, anyio.get_cancelled_exc_class()):
            # The timeout's cancellation, re-raised as an exception anyio does not know.
            self.tasks.failed_attempt(task, self._expired(task), time.time())
        else:
            self.tasks.failed_attempt(task, exc, time.time())

    @staticmethod
    def _expired(task: Task) -> TimeoutError:
        record = task.record
        return TimeoutError(
            f"attempt {record.attempts} of task {record.id} "
            f"ran longer than its timeout of {record.timeout} seconds"
        )
