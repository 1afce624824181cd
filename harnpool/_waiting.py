"""Waiting for a task to finish; refusing a wait from inside the pool that could never return."""

from __future__ import annotations

from ._errors import WaitDeadlock
from ._records import FINISHED
from ._task import Task
from ._transitions import Tasks

__all__ = ["Waits"]


class Waits:
    """Who waits for whom: for each running task blocked in ``wait``, the tasks it waits for."""

    def __init__(self, tasks: Tasks) -> None:
        self._tasks = tasks
        self._waits: dict[str, list[Task]] = {}

    def enter(self, waiter: Task, target: Task) -> None:
        """Note that running task ``waiter`` waits for ``target``, unless that could never return.

        Raises:
            WaitDeadlock: ``target`` could never finish while ``waiter`` waits.
        """
        self._check_deadlock(waiter, target)
        self._waits.setdefault(waiter.record.id, []).append(target)

    def leave(self, waiter: Task, target: Task) -> None:
        """Note that ``waiter`` no longer waits for ``target``."""
        waits = self._waits[waiter.record.id]
        waits.remove(target)
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
                task.done = self._tasks.prims.event()
            await task.done.wait()
            self._tasks.check_usable()
        if task.batch is not None and not task.batch.durable:
            await task.batch.wait()
