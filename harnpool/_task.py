"""The in-memory task and Job; checks on task functions."""

from __future__ import annotations

import contextvars
import datetime
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, TypeVarTuple

import anyio

from ._cache import WeakCache
from ._loop import Signal
from ._records import TaskRecord
from ._results import storable
from ._settings import check_due, check_task_options
from ._storage import Durable

__all__ = [
    "Job",
    "Task",
    "TaskFunction",
    "TaskId",
    "check_function",
    "function_name",
    "is_async",
]

TaskFunction = Callable[..., Awaitable[Any]] | Callable[..., Any]

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
Ts = TypeVarTuple("Ts")


class _AnyStr(type):
    # Every id is a plain str at runtime, so every str passes for one.
    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, str)


class TaskId(str, Generic[R_co], metaclass=_AnyStr):
    """A task's id, typed by what its function returns: ``TaskId[int]``.

    :meth:`Pool.submit` returns one, and :meth:`Pool.wait` given a
    ``TaskId[R]`` returns an ``R`` to the type checker (a plain ``str`` id
    gives ``Any``). It exists for type checkers only: at runtime every id is
    a plain ``str``, compared, hashed, stored and encoded as one, and
    ``TaskId[int](text)`` returns ``str(text)``, so an id read back from
    elsewhere can be typed again.
    """

    __slots__ = ()

    def __new__(cls, value: object = "") -> TaskId[R_co]:
        return str(value)  # type: ignore[return-value]  # a plain str: see the docstring

    if TYPE_CHECKING:
        # Ids of tasks typed differently may be equal: a key names one task,
        # whichever function a later submit with that key passes.
        def __eq__(self, other: object) -> bool: ...

        def __hash__(self) -> int: ...


class Task:
    """A task's latest record plus what only this process knows about it."""

    __slots__ = ("args", "batch", "cancelling", "context", "done", "exc", "fn", "record", "scope")

    def __init__(
        self,
        record: TaskRecord,
        fn: TaskFunction | None,
        args: tuple[Any, ...],
        context: contextvars.Context | None = None,
    ) -> None:
        self.record = record
        self.fn = fn
        self.args = args
        #: The submitter's context, each attempt runs in a copy; None: a clean one.
        self.context = context
        #: The batch holding the latest record someone must not hear of before it is durable.
        self.batch: Durable | None = None
        #: Set when the task finishes (or the pool stops); made only when someone waits.
        self.done: Signal | None = None
        #: The exception the function raised in this process, for ``TaskFailed.__cause__``.
        self.exc: BaseException | None = None
        #: The running attempt's cancel scope, and whether Pool.cancel asked to stop it.
        self.scope: anyio.CancelScope | None = None
        self.cancelling = False

    # What the ready queue orders by.
    @property
    def priority(self) -> int:
        return self.record.priority

    @property
    def seq(self) -> int:
        return self.record.seq

    @property
    def submitted_at(self) -> float:
        return self.record.submitted_at

    @property
    def group(self) -> str | None:
        return self.record.group


def _qualified_name(obj: object) -> str:
    while isinstance(obj, functools.partial):
        obj = obj.func
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    # Only for people reading the journal: a lone surrogate must not make it unwritable.
    return storable(f"{module}.{name}")


# Weak caches, not lru_caches: a cache must not keep a user's function (or the
# object behind a bound method) alive once nothing else refers to it.
function_name = WeakCache[object, str](_qualified_name)


def check_function(fn: object) -> None:
    if callable(fn):
        return
    if inspect.iscoroutine(fn):
        fn.close()  # it will never run: spare the "never awaited" warning
        raise TypeError(
            "fn must be a function, given with its arguments, not a coroutine object: "
            "write pool.submit(fetch, url), not pool.submit(fetch(url))"
        )
    raise TypeError(f"fn must be callable, not {type(fn).__qualname__}")


class Job:
    """One task for :meth:`Pool.submit_many`: a function, its arguments, and options.

    ``Job(fn, *args, key=..., priority=..., ...)`` means what
    ``pool.submit(fn, *args, key=..., priority=..., ...)`` means. The options
    are checked here, so a wrong one fails where the job is built; its
    attributes are read-only.

    Raises:
        TypeError: ``fn`` is a coroutine object or not callable, or an option
            has the wrong type (see :meth:`Pool.submit`).
        ValueError: An option is out of range (see :meth:`Pool.submit`).
    """

    # Read-only properties over private slots: checked once, a job is never changed.
    __slots__ = (
        "_args",
        "_delay",
        "_fn",
        "_group",
        "_key",
        "_priority",
        "_retries",
        "_retry_on",
        "_run_at",
        "_timeout",
    )

    def __init__(
        self,
        fn: Callable[[*Ts], object],
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
    ) -> None:
        check_function(fn)
        self._delay: float | None = None
        self._run_at: float | None = None
        if delay is not None or run_at is not None:
            self._delay, self._run_at = check_due(delay, run_at)
        self._fn = fn
        self._args = args
        (
            self._key,
            self._priority,
            self._group,
            self._retries,
            self._retry_on,
            self._timeout,
        ) = check_task_options(key, priority, group, retries, retry_on, timeout)

    @property
    def fn(self) -> TaskFunction:
        """The function to run."""
        return self._fn

    @property
    def args(self) -> tuple[Any, ...]:
        """Its positional arguments."""
        return self._args

    @property
    def key(self) -> str | None:
        """The idempotency key, or None."""
        return self._key

    @property
    def priority(self) -> int:
        """The priority: higher runs first."""
        return self._priority

    @property
    def group(self) -> str | None:
        """The label the ``fair`` strategy round-robins between, or None."""
        return self._group

    @property
    def retries(self) -> int | None:
        """How many failed attempts are retried; None for the pool's default."""
        return self._retries

    @property
    def retry_on(self) -> tuple[type[BaseException], ...] | None:
        """The exception types retried; None for the pool's default."""
        return self._retry_on

    @property
    def timeout(self) -> float | None:
        """Seconds an attempt may run; None for the pool's default."""
        return self._timeout

    @property
    def delay(self) -> float | None:
        """Seconds after submit before the task may start, or None."""
        return self._delay

    @property
    def run_at(self) -> datetime.datetime | None:
        """The time (UTC) before which the task does not start, or None."""
        if self._run_at is None:
            return None
        return datetime.datetime.fromtimestamp(self._run_at, datetime.UTC)

    def _not_before(self) -> float | None:
        """The Unix time the task is due, submitted now; None if it is due at once."""
        if self._run_at is not None:
            return self._run_at
        # The clock is read only for a delay: most submits have none.
        return time.time() + self._delay if self._delay else None

    def __repr__(self) -> str:
        return f"Job({_qualified_name(self._fn)}, *{self._args!r}, key={self._key!r})"


def _check_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


#: Whether a function is awaited rather than run in a thread (asked per run).
is_async = WeakCache[object, bool](_check_async)
