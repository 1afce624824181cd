"""The pool's tasks in memory: status changes, counts and indexes, each change stored."""

from __future__ import annotations

import contextvars
import functools
import heapq
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec

from ._errors import PoolClosedError, QueueFull, UnknownTaskError
from ._events import emit
from ._info import TaskInfo
from ._loop import primitives
from ._queue import ReadyQueue
from ._records import FINISHED, Status, TaskRecord
from ._registry import encode_args, registered_name, unwrap
from ._results import error_message, storable
from ._retry import backoff, retryable
from ._settings import _retry_names, _Settings, _type_name
from ._storage import Durable, Storage
from ._task import Job, Task, TaskFunction, function_name

__all__ = ["Tasks"]


def _no_worker() -> None:
    """Until workers are started there is nobody to wake."""


class Tasks:
    """Every task the pool knows, by id and key, the ready queue, and the counts by status.

    Every status change goes through here, so the counts, the indexes and the
    storage never disagree: the record is handed to the storage first (if
    that raises, memory is unchanged), then memory follows.
    """

    def __init__(self, storage: Storage, settings: _Settings, counter: int) -> None:
        self.storage = storage
        self.settings = settings
        self.path = storage.path
        self.tasks: dict[str, Task] = {}
        self.by_key: dict[str, str] = {}
        self.queued: dict[str, Task] = {}  # every queued task, attached or not
        #: The events and checkpoint of the event loop the pool opened on.
        self.prims = prims = primitives()
        self.ready: ReadyQueue[Task] = ReadyQueue(
            settings.strategy, aging=settings.aging, prims=prims
        )
        self.counts = dict.fromkeys(Status, 0)
        self.counter = counter
        #: Unfinished tasks whose function is known here: leaving the block waits for them.
        self.runnable = 0
        self.idle = prims.event()
        self.room = prims.event()
        self.bounded = settings.max_queued is not None
        #: Whether a task may start before its queued record is durable.
        self.eager = settings.start == "eager"
        self.closed = False
        self.tg: anyio.abc.TaskGroup | None = None
        #: Called whenever a task became ready: the workers decide whether to start one more.
        self.wake_worker: Callable[[], None] = _no_worker
        self.random = random.Random()
        #: The pool's default ``retry_on``, as stored.
        self.retry_on = _retry_names(settings.retry_on)
        #: Called when the task of that id finishes (before its record is durable):
        #: how ``as_completed`` learns of it without a waiter per task.
        self.watchers: dict[str, list[Callable[[Task | None], object]]] = {}
        #: Queued tasks not due yet, earliest first: ``(not_before, seq, task)``. One
        #: timer sleeps until the first is due, however many there are; an entry whose
        #: task was cancelled meanwhile stays until it is due, or until ``stale`` says
        #: that most entries are such and the heap is rebuilt.
        self.due: list[tuple[float, int, Task]] = []
        self.stale = 0
        self.timer_wake = anyio.Event()
        self.retains = settings.keep_finished is not None or settings.keep_finished_for is not None
        #: Finished tasks in the order they finished (their last record became
        #: durable), while retention is on: the oldest is dropped first.
        self.finished: deque[Task] = deque()
        #: Finished tasks retention dropped from memory since open.
        self.dropped = 0

    def load(self, records: list[TaskRecord]) -> None:
        """Take in the records storage found on open, functions unknown yet."""
        finished: list[Task] = []
        for record in records:
            task = Task(record, None, ())
            self.tasks[record.id] = task
            if record.key is not None:
                self.by_key[record.key] = record.id
            self.counts[record.status] += 1
            if record.status is Status.QUEUED:
                self.queued[record.id] = task
            elif self.retains and record.status in FINISHED:
                finished.append(task)
        # The order retention on open kept them by.
        finished.sort(key=lambda t: (t.record.finished_at or 0.0, t.record.seq))
        self.finished.extend(finished)

    # -- looking up -------------------------------------------------------------------

    def get(self, task_id: str) -> Task:
        try:
            return self.tasks[task_id]
        except KeyError:
            seq = task_id[1:]
            given = (
                task_id[:1] == "t"
                and seq.isascii()
                and seq.isdigit()
                and len(seq) < 20
                and 0 < int(seq) <= self.counter
            )
            raise UnknownTaskError(task_id, dropped=self.retains and given) from None

    def check_usable(self) -> None:
        if self.storage.error is not None:
            raise self.storage.error
        if self.closed:
            raise PoolClosedError(f"the pool on {self.path!r} is closed")

    @staticmethod
    def info(task: Task) -> TaskInfo:
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

    def wake_all(self) -> None:
        self.idle.set()
        self.room.set()
        for watchers in list(self.watchers.values()):
            for watch in watchers:
                watch(None)
        for task in self.tasks.values():
            if task.done is not None:
                task.done.set()

    # -- submitting -------------------------------------------------------------------

    def prepare(self, job: Job) -> TaskRecord:
        """Check a job and build its record (id and seq are filled in later)."""
        settings = self.settings
        # A partial of a registered function is stored as that function, with
        # the arguments the partial binds.
        call = unwrap(job._fn, job._args)
        name = registered_name(call.fn)
        if name is not None and not name.isascii():
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"fn is registered under a name that cannot be stored: {name!r}"
                ) from None
        stored = (
            encode_args(call.fn, call.args, kwargs=call.kwargs)
            if name is not None
            else msgspec.UNSET
        )
        retry_on = self.retry_on if job._retry_on is None else _retry_names(job._retry_on)
        return TaskRecord(
            id="",
            seq=0,
            status=Status.QUEUED,
            submitted_at=0.0,
            priority=job._priority,
            key=job._key,
            function=function_name(job._fn),
            name=name,
            args=stored,
            group=job._group,
            retries=settings.retries if job._retries is None else job._retries,
            retry_on=retry_on,
            timeout=settings.timeout if job._timeout is None else job._timeout,
            not_before=job._not_before(),
        )

    def existing(self, job: Job, context: contextvars.Context | None = None) -> Task | None:
        if job._key is None:
            return None
        task_id = self.by_key.get(job._key)
        if task_id is None:
            return None
        task = self.tasks[task_id]
        if task.fn is None:
            if task.record.status is Status.QUEUED:
                self.attach(task, job._fn, job._args, context)
            else:
                # Finished: it never runs again, but its function's return
                # annotation now types the stored result for wait().
                task.fn = job._fn
        return task

    async def admit(self) -> str | None:
        """Make room for one more queued task, as ``on_full`` says.

        Returns:
            None to queue the new task, or the reason to record it rejected.
        """
        limit = self.settings.max_queued
        if limit is None:
            return None
        while self.counts[Status.QUEUED] >= limit:
            policy = self.settings.on_full
            if policy == "reject":
                raise QueueFull(
                    f"the pool on {self.path!r} already holds max_queued={limit} queued tasks"
                )
            if policy == "drop_newest":
                return "drop_newest_queue_full"
            if policy == "drop_oldest":
                if self.ready.claimed:
                    # A worker is about to start a queued task, which makes room:
                    # dropping the oldest now would drop the very task it starts, and
                    # under a steady overload no task would ever run.
                    await anyio.lowlevel.checkpoint()
                    self.check_usable()
                    continue
                oldest = min(self.queued.values(), key=lambda t: t.record.seq)
                batch = oldest.batch
                if batch is not None and not batch.durable:
                    # Not in the ready queue yet, so no worker could have been woken
                    # for it: dropping it now would drop what an idle worker is about
                    # to be handed. Let it arrive, then look again.
                    await batch.wait()
                    self.check_usable()
                    continue
                self.end(oldest, Status.REJECTED, reason="drop_oldest_queue_full")
                continue
            if self.room.is_set():
                self.room = self.prims.event()
            await self.room.wait()
            self.check_usable()
        return None

    def add(
        self,
        job: Job,
        template: TaskRecord,
        reason: str | None,
        context: contextvars.Context | None = None,
    ) -> Task:
        seq = self.counter + 1
        now = time.time()
        record = msgspec.structs.replace(template, id=f"t{seq}", seq=seq, submitted_at=now)
        if reason is not None:
            record = msgspec.structs.replace(
                record, status=Status.REJECTED, finished_at=now, reason=reason
            )
        # Appended first: if the record cannot be written, the pool's memory is unchanged.
        batch = self.storage.append(record)
        self.counter = seq
        task = Task(record, job._fn, job._args, None if reason is not None else context)
        task.batch = batch
        self.tasks[record.id] = task
        if job._key is not None:
            self.by_key[job._key] = record.id
        self.counts[record.status] += 1
        if reason is None:
            self.queued[record.id] = task
            self.runnable += 1
            ready = self.put_ready if record.not_before is None else self.enqueue
            if self.eager:
                # May run before its record is durable: at least once after a crash.
                ready(task)
            else:
                # Queued once durable, whatever becomes of the submitter meanwhile.
                batch.on_durable.append(functools.partial(ready, task))
            emit("info", "task.submitted", pool=self.path, task_id=record.id, key=record.key)
        else:
            if self.retains:
                # Finished at birth: retention counts it as any other finished task.
                batch.on_durable.append(functools.partial(self.retire, task))
            emit(
                "warning",
                "task.rejected",
                pool=self.path,
                task_id=record.id,
                key=record.key,
                reason=reason,
            )
        return task

    def attach(
        self,
        task: Task,
        fn: TaskFunction,
        args: tuple[Any, ...],
        context: contextvars.Context | None = None,
    ) -> None:
        task.fn = fn
        task.args = args
        task.context = context
        self.runnable += 1
        self.enqueue(task)

    # -- readying ---------------------------------------------------------------------

    def enqueue(self, task: Task) -> None:
        """Make a queued task ready now, or hand it to the timer until it is due."""
        due = task.record.not_before
        if due is None or due <= time.time():
            self.put_ready(task)
            return
        heapq.heappush(self.due, (due, task.record.seq, task))
        if self.due[0][2] is task:
            self.timer_wake.set()  # due before the time the timer sleeps until

    async def run_timer(self) -> None:
        """Make each delayed task ready once due: one sleeper for every delayed task."""
        while True:
            now = time.time()
            due = self.due
            while due and due[0][0] <= now:
                # Every task due by now reaches the ready queue before a worker is
                # scheduled, so the queue's order holds among them.
                self.put_ready(heapq.heappop(due)[2])
            self.timer_wake = anyio.Event()
            if due:
                with anyio.move_on_after(due[0][0] - now):
                    await self.timer_wake.wait()
            else:
                await self.timer_wake.wait()

    def _forget_due(self) -> None:
        """Count one more timer entry whose task ended; rebuild the heap once most are such."""
        self.stale += 1
        if self.stale * 2 > len(self.due):
            self.due = [e for e in self.due if e[2].record.status is Status.QUEUED]
            heapq.heapify(self.due)
            self.stale = 0
            self.timer_wake.set()

    def put_ready(self, task: Task) -> None:
        if task.record.status is not Status.QUEUED:
            return  # dropped or cancelled before it was durable, or while it waited to be due
        self.ready.put(task)
        self.wake_worker()  # callable from a batch's callback, outside any task

    # -- transitions ------------------------------------------------------------------

    def set_status(self, task: Task, record: TaskRecord) -> Durable:
        old = task.record.status
        self.counts[old] -= 1
        self.counts[record.status] += 1
        task.record = record
        if old is Status.QUEUED and record.status is not Status.QUEUED:
            del self.queued[record.id]
            if self.bounded:
                self.room.set()
        elif record.status is Status.QUEUED and old is not Status.QUEUED:
            self.queued[record.id] = task
        return self.storage.append(record)

    def finish(self, task: Task, record: TaskRecord) -> None:
        attached = task.fn is not None
        task.batch = self.set_status(task, record)
        task.args = ()
        task.context = None  # a finished task keeps none of its submitter's values alive
        if attached:
            self.runnable -= 1
            if self.runnable == 0:
                self.idle.set()
        if task.done is not None:
            # Wake waiters once the final record is durable: one wake-up, not two.
            task.batch.on_durable.append(task.done.set)
        if self.watchers:
            for watch in self.watchers.pop(record.id, ()):
                watch(task)
        if self.retains:
            # Dropped only once durable: until then a crash would bring the
            # task back unfinished, beside a new one submitted with its key.
            task.batch.on_durable.append(functools.partial(self.retire, task))

    def retire(self, task: Task) -> None:
        """Count a task finished for retention, and drop the finished tasks it pushes out.

        Amortised O(1): every finished task enters ``finished`` once and leaves
        it once. The oldest are dropped first while more than ``keep_finished``
        are kept, and while the oldest finished more than ``keep_finished_for``
        seconds ago; dropped tasks are forgotten as a reopen with the same
        settings would: unknown by id, their keys free for a new task.
        """
        finished = self.finished
        finished.append(task)
        keep = self.settings.keep_finished
        if keep is not None:
            while len(finished) > keep:
                self.drop(finished.popleft())
        keep_for = self.settings.keep_finished_for
        if keep_for is not None:
            cutoff = time.time() - keep_for
            while finished and (finished[0].record.finished_at or 0.0) < cutoff:
                self.drop(finished.popleft())

    def drop(self, task: Task) -> None:
        """Forget a finished task, in memory and in storage."""
        record = task.record
        if self.tasks.get(record.id) is not task or record.status not in FINISHED:
            return  # pragma: no cover - a finished task never changes again
        del self.tasks[record.id]
        if record.key is not None and self.by_key.get(record.key) == record.id:
            del self.by_key[record.key]
        self.counts[record.status] -= 1
        self.dropped += 1
        self.storage.forget(record.id)

    def end(self, task: Task, status: Status, *, reason: str) -> None:
        """Record a task cancelled or rejected without a (further) run."""
        self.finish(
            task,
            msgspec.structs.replace(
                task.record, status=status, finished_at=time.time(), reason=reason
            ),
        )
        if task.record.not_before is not None and self.due:
            self._forget_due()
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

    def failed_attempt(self, task: Task, exc: BaseException, now: float) -> None:
        record = task.record
        error_type = storable(_type_name(type(exc)))
        message = error_message(exc)
        error = {"error_type": error_type, "error_message": message}
        # Runs a crash interrupted are not failures: they do not use up retries.
        failures = record.attempts - record.recoveries
        if failures <= record.retries and retryable(record, exc):
            settings = self.settings
            delay = backoff(
                failures, settings.retry_backoff, settings.retry_backoff_max, self.random
            )
            task.batch = self.set_status(
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
            self.enqueue(task)
            return
        task.exc = exc
        self.finish(
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
