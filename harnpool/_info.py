"""Frozen value objects that describe a pool and its tasks."""

from __future__ import annotations

import msgspec

from ._journal import TornTail
from ._records import Status

__all__ = ["PoolStatistics", "RecoveryReport", "TaskInfo"]


class TaskInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one task.

    Times are seconds since the epoch (``time.time()``).

    Attributes:
        id: The task's id, unique within its pool.
        key: The idempotency key, if the task was submitted with one.
        priority: Higher runs first.
        seq: Submission order; the tie-break among equal priorities.
        status: Where the task is in its life.
        function: The qualified name of the task's function.
        attached: Whether this process knows the task's function. A task
            recovered from a journal is not attached, and an unfinished one does
            not run, until it is submitted again with its key.
        attempts: How many times the task was started, crashed runs included.
        recoveries: How many of those runs a crash interrupted; only the other
            attempts count against ``retries``.
        submitted_at: When it was first submitted.
        started_at: When its latest run started, if it is running or finished.
        finished_at: When it finished, if it has.
        error_type: For a failed task, the exception's qualified type name;
            while a retry is pending, that of the attempt that failed.
        error_message: ``str()`` of that exception.
        name: The registered name of the task's function (``harnpool.task``);
            such a task resumes on its own when its pool is reopened.
        group: The label the ``fair`` strategy round-robins between.
        retries: How many failed attempts may be retried.
        timeout: Seconds an attempt may take.
        not_before: When a queued task becomes due (Unix seconds): its
            ``delay`` or ``run_at``, or a pending retry's backoff; None once started.
        reason: Why the task was rejected or cancelled.
    """

    id: str
    key: str | None
    priority: int
    seq: int
    status: Status
    function: str | None
    attached: bool
    attempts: int
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    error_type: str | None
    error_message: str | None
    name: str | None
    group: str | None
    retries: int
    timeout: float | None
    not_before: float | None
    reason: str | None
    recoveries: int = 0


class PoolStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counts of a pool's tasks by status, and its limit.

    Attributes:
        strategy: The ready queue's order.
        max_concurrent: How many tasks may run at once.
        max_queued: How many tasks may be queued, or None for no bound.
        queued: Tasks waiting to run, attached or not.
        running: Tasks running now.
        completed: Tasks that returned a result.
        failed: Tasks whose function raised.
        rejected: Tasks the pool refused to run.
        cancelled: Tasks cancelled before they finished.
        waiting_for_function: Queued tasks recovered from the journal whose
            function this process does not know yet.
        flushes: Journal flushes (one write and one fdatasync each) since open.
        workers: Worker tasks started since open. Workers start as queued work
            needs them, up to ``max_concurrent``, and then stay.
        threads: Threads running a plain (sync) function, including those a
            timeout or cancel abandoned; at most ``max_concurrent``.
        dropped_finished: Finished tasks ``keep_finished`` or
            ``keep_finished_for`` dropped since open (no longer counted above).
        compactions: Times the journal compacted itself since open.
    """

    strategy: str
    max_concurrent: int
    max_queued: int | None
    queued: int
    running: int
    completed: int
    failed: int
    rejected: int
    cancelled: int
    waiting_for_function: int
    flushes: int
    workers: int = 0
    threads: int = 0
    dropped_finished: int = 0
    compactions: int = 0


class RecoveryReport(msgspec.Struct, frozen=True, kw_only=True):
    """What opening a journal found.

    Attributes:
        path: The journal's path.
        created: True if the journal did not exist and was created.
        tasks: How many tasks the journal held.
        requeued: Ids of tasks a crash interrupted while running; they were
            queued again at their original place.
        queued: How many tasks were waiting to run, ``requeued`` included.
        finished: How many tasks had finished (any final status).
        resumed: Ids of unfinished tasks whose registered function was found,
            so they run without being submitted again.
        unresolved: Ids of unfinished registered tasks whose function is not
            registered in this process; they wait to be re-attached.
        dropped_finished: Finished tasks retention removed from the journal.
        torn_tail: The incomplete last line of the journal that was skipped,
            if any; always None for a storage that has no lines.
        crash_looped: Ids of tasks recorded ``failed`` on open because crashes
            interrupted them more than ``max_recoveries`` times (their error
            is :class:`harnpool.TaskCrashLoop`); they are not in ``requeued``.
    """

    path: str
    created: bool
    tasks: int
    requeued: tuple[str, ...]
    queued: int
    finished: int
    resumed: tuple[str, ...]
    unresolved: tuple[str, ...]
    dropped_finished: int
    torn_tail: TornTail | None
    crash_looped: tuple[str, ...] = ()
