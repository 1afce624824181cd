"""Waiting for a task to finish; refusing a wait from inside the pool that could never return."""

from __future__ import annotations

import anyio

from ._errors import WaitDeadlock, WaitTimeout
from ._records import FINISHED
from ._task import Task
from ._transitions import Tasks
from ._worker import running

__all__ = ["Waits"]


class Waits:
    """Who waits for whom: for each running task blocked in ``wait``, the tasks it waits for."""

    def __init__(self, tasks: Tasks) -> None:
        self._tasks = tasks
        self._waits: dict[str, list[Task]] = {}

    async def wait(self, task: Task, timeout: float | None) -> None:
        """Return once ``task`` has finished and its final record is durable.

        Raises:
            WaitDeadlock: Called from a running task of this pool, for a task
                that could never finish.
            WaitTimeout: ``timeout`` ran out first.
            PoolClosedError, JournalWriteError: See :meth:`Tasks.check_usable`.
        """
        current = running.get()
        waiter = current[1] if current is not None and current[0] is self._tasks else None
        if waiter is not None:
            self._check_deadlock(waiter, task)
            self._waits.setdefault(waiter.record.id, []).append(task)
        try:
            if timeout is None:
                await self.finished(task)
            else:
                with anyio.move_on_after(timeout) as scope:
                    await self.finished(task)
                if scope.cancelled_caught:
                    raise WaitTimeout(task.record.id, timeout)
        finally:
            if waiter is not None:
                waits = self._waits[waiter.record.id]
                waits.remove(task)
                if not waits:
                    del self._waits[waiter.record.id]

    def _check_deadlock(self, waiter: Task, target: Task) -> None:
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
        limit = self._tasks.settings.max_concurrent
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

    async def finished(self, task: Task) -> None:
        """Return once ``task`` has finished and its final record is durable."""
        while task.record.status not in FINISHED:
            if task.done is None:
                task.done = anyio.Event()
            await task.done.wait()
            self._tasks.check_usable()
        if task.batch is not None and not task.batch.durable:
            await task.batch.wait()
