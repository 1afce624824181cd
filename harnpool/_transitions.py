"""The pool's tasks in memory: status changes, counts and indexes, each change stored."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec

from ._errors import PoolClosedError, QueueFull, UnknownTaskError
from ._events import emit
from ._info import TaskInfo
from ._queue import ReadyQueue
from ._records import Status, TaskRecord
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
        self.ready: ReadyQueue[Task] = ReadyQueue(settings.strategy, aging=settings.aging)
        self.counts = dict.fromkeys(Status, 0)
        self.counter = counter
        #: Unfinished tasks whose function is known here: leaving the block waits for them.
        self.runnable = 0
        self.idle = anyio.Event()
        self.room = anyio.Event()
        self.bounded = settings.max_queued is not None
        self.closed = False
        self.tg: anyio.abc.TaskGroup | None = None
        #: Called whenever a task became ready: the workers decide whether to start one more.
        self.wake_worker: Callable[[], None] = _no_worker
        self.random = random.Random()
        #: The pool's default ``retry_on``, as stored.
        self.retry_on = _retry_names(settings.retry_on)

    def load(self, records: list[TaskRecord]) -> None:
        """Take in the records storage found on open, functions unknown yet."""
        for record in records:
            task = Task(record, None, ())
            self.tasks[record.id] = task
            if record.key is not None:
                self.by_key[record.key] = record.id
            self.counts[record.status] += 1
            if record.status is Status.QUEUED:
                self.queued[record.id] = task

    # -- looking up -------------------------------------------------------------------

    def get(self, task_id: str) -> Task:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise UnknownTaskError(task_id) from None

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
        )

    def existing(self, job: Job) -> Task | None:
        if job._key is None:
            return None
        task_id = self.by_key.get(job._key)
        if task_id is None:
            return None
        task = self.tasks[task_id]
        if task.fn is None:
            if task.record.status is Status.QUEUED:
                self.attach(task, job._fn, job._args)
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
                self.room = anyio.Event()
            await self.room.wait()
            self.check_usable()
        return None

    def add(self, job: Job, template: TaskRecord, reason: str | None) -> Task:
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
        task = Task(record, job._fn, job._args)
        task.batch = batch
        self.tasks[record.id] = task
        if job._key is not None:
            self.by_key[job._key] = record.id
        self.counts[record.status] += 1
        if reason is None:
            # Queued once durable, whatever becomes of the submitter meanwhile.
            batch.on_durable.append(functools.partial(self.put_ready, task))
            self.queued[record.id] = task
            self.runnable += 1
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

    def attach(self, task: Task, fn: TaskFunction, args: tuple[Any, ...]) -> None:
        task.fn = fn
        task.args = args
        self.runnable += 1
        self.enqueue(task)

    # -- readying ---------------------------------------------------------------------

    def enqueue(self, task: Task) -> None:
        due = task.record.not_before
        delay = 0.0 if due is None else due - time.time()
        if delay > 0 and self.tg is not None:
            self.tg.start_soon(self._enqueue_later, task, delay)
        else:
            self.put_ready(task)

    async def _enqueue_later(self, task: Task, delay: float) -> None:
        await anyio.sleep(delay)
        self.put_ready(task)

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
        if attached:
            self.runnable -= 1
            if self.runnable == 0:
                self.idle.set()
        if task.done is not None:
            # Wake waiters once the final record is durable: one wake-up, not two.
            task.batch.on_durable.append(task.done.set)

    def end(self, task: Task, status: Status, *, reason: str) -> None:
        """Record a task cancelled or rejected without a (further) run."""
        self.finish(
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
