"""What a task runs in: a copy of its submitter's ``contextvars`` context, and who it is.

Each attempt runs in a fresh copy of the context captured when the task was
submitted (a clean, empty context for a task with no submitter in this
process), so a variable the task sets is seen by neither its submitter, nor
its next attempt, nor the next task of the same worker. In that copy the pool
sets which task runs (:func:`current_task`) and binds ``task_id`` and ``key``
in structlog's context variables.

Workers are long-lived, one per slot, so an async function's coroutine is not
given a task of its own: :func:`run_in` drives it inside the attempt's context
from the worker's task, one ``Context.run`` per step. A plain function runs in
``Context.run`` in its worker thread.
"""

from __future__ import annotations

import contextvars
import types
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any

import msgspec
import structlog.contextvars

from ._errors import NotInTaskError

if TYPE_CHECKING:
    from ._task import Task
    from ._transitions import Tasks

__all__ = ["CurrentTask", "attempt_context", "current_task", "run_in", "running", "submitter"]

#: The pool's tasks and the task whose attempt runs in this context, if any.
running: contextvars.ContextVar[tuple[Tasks, Task] | None] = contextvars.ContextVar(
    "harnpool_running", default=None
)

#: The context of a submitter on another thread (a BlockingPool's caller), if it is not
#: the context the submit runs in.
submitter: contextvars.ContextVar[contextvars.Context | None] = contextvars.ContextVar(
    "harnpool_submitter", default=None
)


class CurrentTask(msgspec.Struct, frozen=True, kw_only=True):
    """The task whose attempt is running, as :func:`current_task` returns it.

    Attributes:
        id: The task's id.
        key: Its idempotency key, if it was submitted with one.
        attempt: Which attempt this is, from 1; runs a crash interrupted count too.
        pool: The pool running it: the journal's path, or the pool's name on
            PostgreSQL.
    """

    id: str
    key: str | None
    attempt: int
    pool: str


def current_task() -> CurrentTask:
    """Return the task whose attempt is running here, in an async task or a plain one's thread.

    Code the task started (its own anyio tasks, threads started with
    ``anyio.to_thread``) sees it too: they inherit the task's context.

    Returns:
        A frozen snapshot: the task's id, key, attempt number and pool.

    Raises:
        NotInTaskError: Not called from inside a task of a pool.
    """
    current = running.get()
    if current is None:
        raise NotInTaskError(
            "harnpool.current_task() was called outside a task: only code a pool runs "
            "as a task (and what that code starts) has a current task"
        )
    tasks, task = current
    record = task.record
    return CurrentTask(id=record.id, key=record.key, attempt=record.attempts, pool=tasks.path)


# structlog's own variables for these keys, as bind_contextvars sets them, taken once
# (from the tokens it returns) rather than looked up by name at every attempt.
_bound = contextvars.Context().run(structlog.contextvars.bind_contextvars, task_id=None, key=None)
_task_id_var: contextvars.ContextVar[Any] = _bound["task_id"].var
_key_var: contextvars.ContextVar[Any] = _bound["key"].var
del _bound


def _enter(tasks: Tasks, task: Task) -> None:
    running.set((tasks, task))
    record = task.record
    _task_id_var.set(record.id)
    _key_var.set(record.key)


def attempt_context(tasks: Tasks, task: Task) -> contextvars.Context:
    """The context one attempt of ``task`` runs in: a copy of its captured one (O(1))."""
    captured = task.context
    context = contextvars.Context() if captured is None else captured.copy()
    context.run(_enter, tasks, task)
    return context


@types.coroutine
def run_in(
    context: contextvars.Context, coro: Coroutine[Any, Any, Any]
) -> Generator[Any, Any, Any]:
    """Await ``coro`` on the calling task, with each of its steps run inside ``context``."""
    # Every step of ``coro``, and every exception thrown into it (a cancellation,
    # GeneratorExit on close), runs inside ``context``; what it yields to the
    # event loop passes through untouched, so the worker's task awaits it.
    run = context.run
    send = coro.send
    throw = coro.throw
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is None:
                yielded = run(send, value)
            else:
                try:
                    yielded = run(throw, error)
                finally:
                    error = None  # no cycle through the traceback
        except StopIteration as stop:
            return stop.value
        try:
            value = yield yielded
        except BaseException as exc:  # handed on to the coroutine, cancellation included
            error = exc
            value = None
