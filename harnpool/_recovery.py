"""What a reopened pool does with what storage found: crash loops, resolving tasks, the report."""

from __future__ import annotations

import time

import msgspec

from ._errors import TaskCrashLoop
from ._events import emit
from ._info import RecoveryReport
from ._records import Status
from ._registry import decode_call, lookup
from ._settings import _type_name
from ._storage import Found
from ._task import Task
from ._transitions import Tasks

__all__ = ["opened_events", "recover"]


def recover(tasks: Tasks, found: Found) -> RecoveryReport:
    """Take in what storage found on open, fail crash loops, resume registered tasks.

    Returns:
        What opening found, for :attr:`Pool.recovery`.
    """
    tasks.load(found.tasks)
    crash_looped = fail_crash_loops(tasks)
    resumed: list[str] = []
    unresolved: list[str] = []
    for task in tasks.queued.values():
        if task.record.name is not None:
            (resumed if resolve(tasks, task) else unresolved).append(task.record.id)
    queued = tasks.counts[Status.QUEUED]
    return RecoveryReport(
        path=found.path,
        created=found.created,
        tasks=len(found.tasks),
        requeued=tuple(i for i in found.interrupted if i not in crash_looped),
        queued=queued,
        finished=len(found.tasks) - queued,
        resumed=tuple(resumed),
        unresolved=tuple(unresolved),
        dropped_finished=found.dropped,
        torn_tail=found.torn_tail,
        crash_looped=tuple(crash_looped),
    )


def fail_crash_loops(tasks: Tasks) -> list[str]:
    """Record ``failed`` every queued task interrupted more than max_recoveries times.

    Every queued task is checked, not only those found running this time:
    if the process died again before the ``failed`` record was durable, the
    next open fails the task again rather than run it.
    """
    limit = tasks.settings.max_recoveries
    if limit is None:
        return []
    looped = [t for t in tasks.queued.values() if t.record.recoveries > limit]
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
        tasks.finish(
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
            pool=tasks.path,
            task_id=record.id,
            key=record.key,
            recoveries=record.recoveries,
            max_recoveries=limit,
        )
    return [t.record.id for t in looped]


def resolve(tasks: Tasks, task: Task) -> bool:
    """Attach a recovered registered task's function and arguments, if known here."""
    record = task.record
    assert record.name is not None
    fn = lookup(record.name)
    if fn is None:
        emit(
            "warning",
            "task.unresolved",
            pool=tasks.path,
            task_id=record.id,
            key=record.key,
            name=record.name,
        )
        return False
    try:
        if not isinstance(record.args, msgspec.UnsetType):
            fn, args = decode_call(fn, record.args)  # a partial if keywords were stored
        else:
            args = ()
    except msgspec.ValidationError as exc:
        emit(
            "warning",
            "task.arguments_mismatch",
            pool=tasks.path,
            task_id=record.id,
            key=record.key,
            name=record.name,
            error=str(exc),
        )
        return False
    task.fn = fn
    task.args = args
    tasks.runnable += 1
    return True


def opened_events(report: RecoveryReport) -> None:
    """Tell what opening found: a torn tail, then the pool opened."""
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
