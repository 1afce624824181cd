"""The pool for sync code: its event loop runs on a thread of its own, behind a blocking portal."""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import datetime
import functools
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar, TypeVarTuple, cast, overload

import anyio.from_thread

from ._completion import AsCompleted
from ._context import submitter
from ._errors import PoolClosedError, WrongThreadError
from ._info import PoolStatistics, RecoveryReport, TaskInfo
from ._pool import Job, OnFull, Pool, TaskId, open_pool
from ._queue import Strategy
from ._schedule import CatchUp
from ._settings import Start
from ._threads import check_not_loop_thread

__all__ = ["BlockingPool", "open_blocking_pool"]

T = TypeVar("T")
R = TypeVar("R")
Ts = TypeVarTuple("Ts")

Backend = Literal["asyncio", "trio"]
_BACKENDS = ("asyncio", "trio")


class BlockingPool:
    """A durable pool for sync code. Make one with :func:`open_blocking_pool`.

    Every method does what the :class:`Pool` method of the same name does, on
    the pool's own event loop thread, and blocks the calling thread until it
    returns; it returns the same value and raises the same errors. Any number
    of threads may call it at once, except the pool's event loop thread
    itself (the one its async task functions run on).
    """

    def __init__(
        self,
        portal: anyio.from_thread.BlockingPortal,
        pool: Pool,
        loop_thread: int,
        backend: str,
    ) -> None:
        self._portal = portal
        self._pool = pool
        self._loop_thread = loop_thread
        self._backend = backend
        self._closed = False

    @property
    def path(self) -> str:
        """The journal's path."""
        return self._pool.path

    @property
    def recovery(self) -> RecoveryReport:
        """What opening the journal found (see :attr:`Pool.recovery`)."""
        return self._pool.recovery

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<BlockingPool {self.path!r} {state} on {self._backend}>"

    @overload
    def _call(self, method: str, fn: Callable[[], Awaitable[T]]) -> T: ...

    @overload
    def _call(self, method: str, fn: Callable[[], T]) -> T: ...

    def _call(self, method: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the pool's event loop (awaiting what it returns); return its outcome."""
        check_not_loop_thread(self._loop_thread, pool=self.path, method=f"BlockingPool.{method}")
        try:
            future = self._portal.start_task_soon(fn)
        except RuntimeError:  # the portal stopped when the block was left
            raise self._closed_error() from None
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            # The portal cancels the calls still running once the block is left.
            raise self._closed_error() from None
        finally:
            # A no-op once done; a caller interrupted while it waited (Ctrl-C in
            # the main thread) stops the call on the loop instead of leaving it.
            future.cancel()

    def _closed_error(self) -> PoolClosedError:
        return PoolClosedError(f"the pool on {self.path!r} is closed")

    # An async function first, so its result type is what it awaits to, not a coroutine.
    @overload
    def submit(
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
    def submit(
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

    def submit(
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

        As :meth:`Pool.submit`: an async ``fn`` runs on the pool's event loop,
        a plain one in a worker thread; ``delay`` or ``run_at`` hold it back
        until it is due.

        Returns:
            The task's id, typed as :meth:`Pool.submit` types it.

        Raises:
            The errors of :meth:`Pool.submit`; WrongThreadError if called on
            the pool's event loop thread.
        """
        submit = functools.partial(
            self._pool.submit,
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
        # Its tasks run in a copy of this thread's context, not the event loop's.
        return cast(
            "TaskId[Any]",
            self._call(
                "submit", functools.partial(_submitting, contextvars.copy_context(), submit)
            ),
        )

    def schedule(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        every: datetime.timedelta | float | None = None,
        cron: str | None = None,
        catch_up: CatchUp = "latest",
    ) -> list[str]:
        """Run a registered function periodically while the pool is open.

        As :meth:`Pool.schedule`.

        Returns:
            The ids of the tasks submitted for missed slots.

        Raises:
            The errors of :meth:`Pool.schedule`; WrongThreadError if called on
            the pool's event loop thread.
        """
        call = functools.partial(
            self._pool.schedule, name, fn, every=every, cron=cron, catch_up=catch_up
        )
        # Its slots' tasks run in a copy of this thread's context, as submit's do.
        return self._call(
            "schedule", functools.partial(_submitting, contextvars.copy_context(), call)
        )

    def unschedule(self, name: str) -> bool:
        """Stop the schedule ``name``, as :meth:`Pool.unschedule`."""
        return self._call("unschedule", functools.partial(self._pool.unschedule, name))

    def submit_many(self, jobs: Iterable[Job]) -> list[str]:
        """Submit several tasks, with one durable write where nothing blocks, and return their ids.

        As :meth:`Pool.submit_many`. ``jobs`` is read in the calling thread.

        Raises:
            The errors of :meth:`Pool.submit_many`; WrongThreadError if called
            on the pool's event loop thread.
        """
        if isinstance(jobs, Iterable) and not isinstance(jobs, Job):
            jobs = list(jobs)  # a generator runs here, not on the event loop
        submit = functools.partial(self._pool.submit_many, jobs)
        return self._call(
            "submit_many", functools.partial(_submitting, contextvars.copy_context(), submit)
        )

    @overload
    def wait(self, task_id: TaskId[R], *, timeout: float | None = None) -> R: ...

    @overload
    def wait(self, task_id: str, *, timeout: float | None = None) -> Any: ...

    def wait(self, task_id: str, *, timeout: float | None = None) -> Any:
        """Wait for a task to finish and return its result, typed as :meth:`Pool.wait` types it.

        Raises:
            The errors of :meth:`Pool.wait` (TaskFailed, WaitTimeout...);
            PoolClosedError also if the block is left while this waits;
            WrongThreadError if called on the pool's event loop thread.
        """
        return self._call("wait", functools.partial(self._pool.wait, task_id, timeout=timeout))

    def as_completed(
        self, ids: Iterable[str], *, timeout: float | None = None
    ) -> BlockingCompletions:
        """Iterate over task ids in the order their tasks finish: ``for task_id in
        pool.as_completed(ids):`` (see :meth:`Pool.as_completed`).

        Each step blocks the calling thread until the next task finishes.
        ``ids`` is read in the calling thread.

        Returns:
            An iterator of task ids.

        Raises:
            The errors of :meth:`Pool.as_completed`, from the call or from a
            step as there; PoolClosedError also if the block is left while a
            step waits; WrongThreadError if called on the pool's event loop
            thread.
        """
        iterator: AsCompleted = self._call(
            "as_completed",
            functools.partial(self._pool.as_completed, _listed(ids), timeout=timeout),
        )
        return BlockingCompletions(self, iterator)

    def results(self, ids: Iterable[str], *, timeout: float | None = None) -> list[Any]:
        """Wait for every task in ``ids`` to finish and return their results, in that order.

        As :meth:`Pool.results`. ``ids`` is read in the calling thread.

        Raises:
            The errors of :meth:`Pool.results`; PoolClosedError also if the
            block is left while this waits; WrongThreadError if called on the
            pool's event loop thread.
        """
        return self._call(
            "results",
            functools.partial(self._pool.results, _listed(ids), timeout=timeout),
        )

    def cancel(self, task_id: str) -> bool:
        """Cancel a task that has not finished (see :meth:`Pool.cancel`).

        Returns:
            True if the task was cancelled; False if it had already finished or
            its function completed anyway.

        Raises:
            The errors of :meth:`Pool.cancel`; WrongThreadError if called on
            the pool's event loop thread.
        """
        return self._call("cancel", functools.partial(self._pool.cancel, task_id))

    def info(self, task_id: str) -> TaskInfo:
        """Return a snapshot of one task (see :meth:`Pool.info`).

        Raises:
            TypeError: ``task_id`` is not a str.
            UnknownTaskError: No task has this id.
        """
        return self._call("info", functools.partial(self._pool.info, task_id))

    def tasks(self) -> list[TaskInfo]:
        """Return a snapshot of every task the pool knows, in submission order."""
        return self._call("tasks", self._pool.tasks)

    def statistics(self) -> PoolStatistics:
        """Return the pool's counts of tasks by status (see :meth:`Pool.statistics`)."""
        return self._call("statistics", self._pool.statistics)


async def _submitting(context: contextvars.Context, call: Callable[[], Awaitable[T]]) -> T:
    """Submit on the pool's loop, the tasks to run in ``context``, their submitter's."""
    submitter.set(context)  # in the context of this one call's task only
    return await call()


def _listed(ids: object) -> Any:
    """``ids`` read in the calling thread (a generator must not run on the event loop)."""
    if isinstance(ids, Iterable) and not isinstance(ids, str | bytes):
        return list(ids)
    return ids  # refused on the loop, as the pool refuses it


class BlockingCompletions:
    """The iterator :meth:`BlockingPool.as_completed` returns: each step blocks.

    Breaking out of the loop, or calling :meth:`close`, stops waiting.
    """

    def __init__(self, pool: BlockingPool, iterator: AsCompleted) -> None:
        self._pool = pool
        self._iterator = iterator

    def __iter__(self) -> BlockingCompletions:
        return self

    def __next__(self) -> str:
        try:
            return self._pool._call("as_completed", self._iterator.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Stop waiting; the tasks are not affected."""
        try:
            self._pool._call("as_completed", self._iterator.close)
        except WrongThreadError:  # dropped on the loop's own thread
            self._iterator.close()
        except PoolClosedError:
            pass  # the pool dropped every registration as it closed

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _enter_loop_thread(name: str) -> int:
    threading.current_thread().name = name
    return threading.get_ident()


@contextmanager
def open_blocking_pool(
    path: str | os.PathLike[str],
    *,
    backend: Backend = "asyncio",
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
) -> Iterator[BlockingPool]:
    """Open the durable pool at ``path`` for sync code: ``with open_blocking_pool(path) as pool:``.

    The pool runs on an event loop in a thread of its own (an anyio blocking
    portal); the :class:`BlockingPool` hands each call to it and blocks until
    it returns, so plain threads (web request handlers, scripts, executors)
    submit and wait as ``async with open_pool(...)`` code does. Async task
    functions run on that loop, plain ones in its worker threads.

    Leaving the block does what leaving :func:`open_pool`'s block does: it
    waits for every task whose function is known to finish; left by an
    exception, it cancels running tasks (they stay ``running`` in the journal
    for the next open) and re-raises that exception as it was. Calls still
    waiting in other threads then raise PoolClosedError, as do later calls.

    Args:
        path: The journal file, or a PostgreSQL DSN (see :func:`open_pool`).
        backend: The event loop the pool runs on: ``"asyncio"`` or ``"trio"``.
        max_concurrent: See :func:`open_pool`, as for every other setting.

    Yields:
        The open pool.

    Raises:
        TypeError: ``backend`` is not a str, or a setting has the wrong type.
        ValueError: ``backend`` is neither ``"asyncio"`` nor ``"trio"``, or a
            setting is out of range.
        The other errors of :func:`open_pool` (JournalLockedError...), as
        they are.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, not {type(backend).__qualname__}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be 'asyncio' or 'trio', not {backend!r}")
    opening = open_pool(
        path,
        max_concurrent=max_concurrent,
        max_queued=max_queued,
        on_full=on_full,
        strategy=strategy,
        aging=aging,
        retries=retries,
        retry_on=retry_on,
        retry_backoff=retry_backoff,
        retry_backoff_max=retry_backoff_max,
        timeout=timeout,
        keep_finished=keep_finished,
        keep_finished_for=keep_finished_for,
        max_recoveries=max_recoveries,
        start=start,
        name=name,
        workers=workers,
        lease=lease,
    )
    with anyio.from_thread.start_blocking_portal(backend) as portal:
        # A user's exception passes through both blocks as it is: open_pool re-raises
        # it once it has abandoned the running tasks, and the portal, seeing it,
        # cancels the calls still running.
        blocking: BlockingPool | None = None
        try:
            with portal.wrap_async_context_manager(opening) as pool:
                loop_thread = portal.call(_enter_loop_thread, f"harnpool {pool.path}")
                blocking = BlockingPool(portal, pool, loop_thread, backend)
                yield blocking
        finally:
            # Once the pool has drained: until then it serves the other threads.
            if blocking is not None:
                blocking._closed = True
