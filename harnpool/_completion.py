"""Task ids as their tasks finish: the iterator behind ``as_completed`` and ``results``.

An iterator registers one inbox with the pool for all the tasks it still
waits for, rather than a waiter per task; the pool puts a task in the inbox
when it finishes. Registrations are dropped as tasks arrive, when the
iteration ends (exhausted, timed out, failed), on :meth:`AsCompleted.aclose`,
and when a consumer that broke out of its loop lets go of the iterator.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

import anyio

from ._errors import TaskNotAttached, WaitTimeout
from ._records import FINISHED
from ._task import Task
from ._transitions import Tasks
from ._waiting import Waits

__all__ = ["AsCompleted", "Inbox", "JournalCompletions"]


class Inbox:
    """Where a pool drops the ids of tasks that finished (or ``None``: look again)."""

    __slots__ = ("arrived", "event", "woken")

    def __init__(self) -> None:
        self.arrived: deque[Any] = deque()
        self.event: anyio.Event | None = None
        self.woken = False

    def __call__(self, item: Any) -> None:
        if item is not None:
            self.arrived.append(item)
        self.woken = True
        if self.event is not None:
            self.event.set()

    async def wait(self) -> None:
        """Return once something was dropped here since the last call."""
        if not self.woken:
            self.event = anyio.Event()
            await self.event.wait()
        self.woken = False
        self.event = None


class AsCompleted:
    """An async iterator over task ids in the order their tasks finish.

    Each distinct id is yielded once, after its task's final record is stored
    (when ``wait`` would return). Ids are looked up, and the ``timeout``
    starts, at the first step; the pool is checked then too.
    """

    def __init__(self, ids: list[str], timeout: float | None, loop_thread: int) -> None:
        self._ids = ids
        self._timeout = timeout
        self._loop_thread = loop_thread
        self._deadline = math.inf
        #: Ids not yet yielded, in the order given; None until the first step.
        self._pending: dict[str, None] | None = None
        self._inbox = Inbox()
        self._started = False
        self._closed = False

    def __aiter__(self) -> AsCompleted:
        return self

    async def __anext__(self) -> str:
        if self._closed:
            raise StopAsyncIteration
        try:
            if self._pending is None:
                if self._timeout is not None:
                    self._deadline = anyio.current_time() + self._timeout
                self._pending = dict.fromkeys(self._ids)
            if not self._started:
                await self._start()  # again, whole, if a cancellation interrupted it
                self._started = True
            if not self._pending:
                raise StopAsyncIteration
            with anyio.CancelScope(deadline=self._deadline) as scope:
                task_id = await self._next()
            if scope.cancelled_caught:
                assert self._timeout is not None
                raise WaitTimeout(
                    next(iter(self._pending)), self._timeout, unfinished=len(self._pending)
                )
        except anyio.get_cancelled_exc_class():
            raise  # a step cancelled from outside: the iteration may go on
        except BaseException:
            self.close()
            raise
        del self._pending[task_id]
        return task_id

    async def aclose(self) -> None:
        """Stop the iteration and drop its registrations (for ``contextlib.aclosing``)."""
        self.close()

    def close(self) -> None:
        """Stop the iteration and drop its registrations; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._unregister()

    def __del__(self) -> None:
        # A consumer that broke out of ``async for`` lets go of the iterator; the
        # pool's state is only touched on its event loop's thread.
        if not self._closed and threading.get_ident() == self._loop_thread:
            self.close()

    async def _start(self) -> None:
        """Look up every id, then note those finished and register for the others."""
        raise NotImplementedError

    async def _next(self) -> str:
        """The id of the next task to finish, once its final record is stored."""
        raise NotImplementedError

    def _unregister(self) -> None:
        raise NotImplementedError


class JournalCompletions(AsCompleted):
    """:class:`AsCompleted` for a pool whose tasks all live in this process's memory."""

    def __init__(
        self,
        tasks: Tasks,
        waits: Waits,
        waiter: Task | None,
        ids: list[str],
        timeout: float | None,
        loop_thread: int,
    ) -> None:
        super().__init__(ids, timeout, loop_thread)
        self._tasks = tasks
        self._waits = waits
        #: The running task of this pool that iterates, if any: for the deadlock checks.
        self._waiter = waiter
        self._watched: list[str] = []
        self._entered: dict[str, Task] = {}
        #: The tasks yielded so far, by id: their outcomes stay at hand even once
        #: retention has dropped them from the pool.
        self.seen: dict[str, Task] = {}

    async def _start(self) -> None:
        tasks = self._tasks
        assert self._pending is not None
        found = [tasks.get(task_id) for task_id in self._pending]
        tasks.check_usable()
        for task in found:
            record = task.record
            if task.fn is None and record.status not in FINISHED:
                raise TaskNotAttached(task_id=record.id, key=record.key, function=record.function)
        inbox = self._inbox
        for task in found:
            if task.record.status in FINISHED:
                inbox.arrived.append(task)
                continue
            if self._waiter is not None:
                self._waits.enter(self._waiter, task)
                self._entered[task.record.id] = task
            tasks.watchers.setdefault(task.record.id, []).append(inbox)
            self._watched.append(task.record.id)

    async def _next(self) -> str:
        inbox = self._inbox
        while not inbox.arrived:
            await inbox.wait()
            self._tasks.check_usable()
        task: Task = inbox.arrived[0]
        if self._waiter is not None and self._entered.pop(task.record.id, None) is not None:
            self._waits.leave(self._waiter, task)
        # Finished, but told of only once its final record is durable, as by wait();
        # taken from the inbox only then, so a cancelled step loses nothing.
        await self._waits.finished(task)
        inbox.arrived.popleft()
        self.seen[task.record.id] = task
        return task.record.id

    def _unregister(self) -> None:
        watchers = self._tasks.watchers
        for task_id in self._watched:
            registered = watchers.get(task_id)
            if registered is not None and self._inbox in registered:
                registered.remove(self._inbox)
                if not registered:
                    del watchers[task_id]
        self._watched.clear()
        if self._waiter is not None:
            for task in self._entered.values():
                self._waits.leave(self._waiter, task)
        self._entered.clear()
        self._inbox.arrived.clear()
