"""Periodic tasks: schedules declared on an open pool, each slot one keyed task.

A schedule runs a registered function at every slot of ``every`` (a period
whose slots are aligned to the Unix epoch, so every process computes the same
ones) or of ``cron`` (an expression evaluated in UTC by cronsim). A slot
becomes one task keyed ``f"{name}@{slot.isoformat()}"``, whose only argument
is the slot, an aware UTC datetime. Keys are idempotent on every storage, so a
slot fires once however many processes schedule it and however often they
restart.

One anyio task per schedule sleeps until the next slot, then submits that
slot's task. Submitting at the slot, rather than ahead with ``run_at``, keeps
nothing in the queue for a slot to come: leaving the pool's block stops a
schedule at once instead of waiting for its next slot, and a schedule removed
from the code leaves no task behind. When a schedule is declared, the newest
key under its name says which slot fired last; ``catch_up`` says what becomes
of the slots after it that have passed.
"""

from __future__ import annotations

import datetime
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast

import anyio
import anyio.abc

from ._errors import (
    CronUnavailableError,
    HarnpoolError,
    InvalidCronError,
    JournalWriteError,
    PoolClosedError,
)
from ._events import emit
from ._registry import _parameters, registered_name
from ._settings import _choice, _seconds, _text, _type_error
from ._task import Job, TaskFunction, check_function, function_name

if TYPE_CHECKING:
    from cronsim import CronSim

__all__ = ["CATCH_UP", "MAX_CATCH_UP", "CatchUp", "Plan", "Schedules", "check_schedule"]

CatchUp = Literal["latest", "all", "none"]
CATCH_UP: tuple[CatchUp, ...] = ("latest", "all", "none")
#: With ``catch_up="all"``, at most this many missed slots (the newest) are submitted at once.
MAX_CATCH_UP = 1000

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)
#: The longest ``every``: a slot must stay within what ``datetime`` represents.
_MAX_EVERY = datetime.timedelta(days=36525)


def _us(moment: datetime.datetime) -> int:
    """Microseconds since the Unix epoch."""
    return (moment - _EPOCH) // _MICROSECOND


def _at(us: int) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(microseconds=us)


def _now() -> datetime.datetime:
    return _at(time.time_ns() // 1000)


class _Every:
    """Slots every ``us`` microseconds from the Unix epoch."""

    __slots__ = ("us",)

    def __init__(self, us: int) -> None:
        self.us = us

    def after(self, moment: datetime.datetime) -> datetime.datetime:
        return _at((_us(moment) // self.us + 1) * self.us)

    def missed(
        self, last: datetime.datetime, now: datetime.datetime, limit: int
    ) -> list[datetime.datetime]:
        first = _us(last) // self.us + 1
        final = _us(now) // self.us
        return [_at(k * self.us) for k in range(max(first, final - limit + 1), final + 1)]


class _Cron:
    """Slots where a cron expression matches, in UTC."""

    __slots__ = ("cron", "expression")

    def __init__(self, expression: str, cron: type[CronSim]) -> None:
        self.expression = expression
        self.cron = cron

    def after(self, moment: datetime.datetime) -> datetime.datetime:
        return next(self.cron(self.expression, moment))

    def missed(
        self, last: datetime.datetime, now: datetime.datetime, limit: int
    ) -> list[datetime.datetime]:
        found: list[datetime.datetime] = []
        # cronsim's reverse iteration gives times before its start: a microsecond
        # later, so a slot at ``now`` itself counts.
        for slot in self.cron(self.expression, now + _MICROSECOND, reverse=True):
            if slot <= last or len(found) == limit:
                break
            found.append(slot)
        return found[::-1]


@dataclass(frozen=True, slots=True)
class Plan:
    """A schedule's checked arguments."""

    name: str
    fn: TaskFunction
    slots: _Every | _Cron
    catch_up: CatchUp

    @property
    def prefix(self) -> str:
        return self.name + "@"

    def key(self, slot: datetime.datetime) -> str:
        return f"{self.name}@{slot.isoformat()}"


def _load_cron(name: str) -> type[CronSim]:
    try:
        from cronsim import CronSim
    except ImportError as exc:
        raise CronUnavailableError(schedule=name) from exc
    return CronSim


def check_schedule(name: object, fn: object, every: object, cron: object, catch_up: object) -> Plan:
    """Check ``Pool.schedule``'s arguments, before anything is looked up or written.

    Raises:
        TypeError: A wrong type; both or neither of ``every`` and ``cron``; a
            function that is not registered, or does not take the slot, a
            ``datetime.datetime``, as its one positional argument.
        ValueError: ``name`` is empty or holds ``@``; ``every`` is not above
            0, below a microsecond or above a century; an unknown ``catch_up``.
        InvalidCronError: ``cron`` cannot be parsed.
        CronUnavailableError: ``cron`` was given without cronsim installed.
    """
    checked = _text("name", name)
    if checked is None:
        raise _type_error("name", "a str", name)
    if not checked or "@" in checked:
        raise ValueError(
            f"name must be a non-empty str without '@' (it starts each slot's key), not {checked!r}"
        )
    check_function(fn)
    fn = cast(TaskFunction, fn)
    if registered_name(fn) is None:
        raise TypeError(
            f"fn {function_name(fn)!r} must be registered with @harnpool.task to be "
            "scheduled: a slot's task must run in whichever process, and after whichever "
            "restart, takes it"
        )
    _check_takes_slot(fn)
    if (every is None) == (cron is None):
        raise TypeError(
            "give every= or cron=, not both" if every is not None else "give every= or cron="
        )
    _choice("catch_up", catch_up, CATCH_UP)
    slots: _Every | _Cron
    if every is not None:
        slots = _Every(_check_every(every))
    else:
        if not isinstance(cron, str):
            raise _type_error("cron", "a str", cron)
        cron_class = _load_cron(checked)
        try:
            next(cron_class(cron, _now()))
        except Exception as exc:  # cronsim's CronSimError, or whatever a strange input raises
            raise InvalidCronError(expression=cron, schedule=checked, reason=str(exc)) from exc
        slots = _Cron(cron, cron_class)
    return Plan(name=checked, fn=fn, slots=slots, catch_up=catch_up)  # type: ignore[arg-type]


def _check_every(every: object) -> int:
    """``every`` in whole microseconds."""
    if isinstance(every, datetime.timedelta):
        if every <= datetime.timedelta(0):
            raise ValueError(f"every must be more than 0 seconds, not {every!r}")
        period = every
    else:
        if not isinstance(every, int | float) or isinstance(every, bool):
            raise _type_error("every", "a datetime.timedelta or a number of seconds", every)
        seconds = _seconds("every", every, positive=True)
        assert seconds is not None
        if seconds > _MAX_EVERY.total_seconds():
            raise ValueError(f"every must be at most {_MAX_EVERY.days} days, not {every!r}")
        period = datetime.timedelta(seconds=seconds)
    if period > _MAX_EVERY:
        raise ValueError(f"every must be at most {_MAX_EVERY.days} days, not {every!r}")
    us = period // _MICROSECOND
    if us < 1:
        raise ValueError(f"every must be at least a microsecond, not {every!r}")
    return us


def _check_takes_slot(fn: TaskFunction) -> None:
    name = function_name(fn)
    try:
        inspect.signature(fn).bind(_EPOCH)
    except TypeError:
        raise TypeError(
            f"fn {name!r} must take the slot (a datetime) as its one positional argument"
        ) from None
    except ValueError:  # no signature to check
        pass
    fixed = _parameters(fn).positional
    if not fixed or fixed[0] is not datetime.datetime:
        # Annotated, the slot decodes as a datetime after a restart or in another process.
        raise TypeError(f"fn {name!r} must annotate its slot parameter as datetime.datetime")


#: Looks up the keys of the pool's tasks that start with a prefix (all, or the greatest).
KeysWith = Callable[[str], Awaitable[Iterable[str]]]
SubmitMany = Callable[[Iterable[Job]], Awaitable[list[str]]]


def _slot_of(key: str, prefix: str) -> datetime.datetime | None:
    try:
        slot = datetime.datetime.fromisoformat(key[len(prefix) :])
    except ValueError:
        return None
    return slot if slot.utcoffset() is not None else None


@dataclass(slots=True)
class _Running:
    plan: Plan
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class Schedules:
    """A pool's schedules: each one an anyio task in the pool's task group."""

    def __init__(self, path: str, keys_with: KeysWith, submit_many: SubmitMany) -> None:
        self.path = path
        self.keys_with = keys_with
        self.submit_many = submit_many
        self.running: dict[str, _Running] = {}
        self.tg: anyio.abc.TaskGroup | None = None
        self.stopped = False

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self.tg = tg

    def stop(self) -> None:
        """End every schedule: the pool is closing."""
        self.stopped = True
        for running in self.running.values():
            running.scope.cancel()
        self.running.clear()

    def remove(self, name: str) -> bool:
        running = self.running.pop(name, None)
        if running is None:
            return False
        running.scope.cancel()
        return True

    async def add(self, plan: Plan) -> list[str]:
        """Start a schedule, after submitting the missed slots ``catch_up`` asks for.

        Returns:
            The ids of the tasks of the missed slots it submitted.
        """
        if self.stopped or self.tg is None:
            raise PoolClosedError(f"the pool on {self.path!r} is closed")
        if plan.name in self.running:
            raise ValueError(
                f"a schedule named {plan.name!r} is already declared on the pool "
                f"{self.path!r}: unschedule it first"
            )
        # Taken before the catch-up awaits, so a second declaration meanwhile is refused.
        running = self.running[plan.name] = _Running(plan)
        try:
            now = _now()
            ids: list[str] = []
            if plan.catch_up != "none":
                last = None
                for key in await self.keys_with(plan.prefix):
                    slot = _slot_of(key, plan.prefix)
                    if slot is not None and (last is None or slot > last):
                        last = slot
                if last is not None:
                    limit = MAX_CATCH_UP if plan.catch_up == "all" else 1
                    missed = plan.slots.missed(last, now, limit)
                    if missed:
                        ids = await self._fire(plan, missed, catch_up=True)
        except BaseException:
            if self.running.get(plan.name) is running:
                del self.running[plan.name]
            raise
        if running.scope.cancel_called:  # unscheduled, or the pool closed, meanwhile
            return ids
        self.tg.start_soon(self._run, running, now)
        return ids

    async def _run(self, running: _Running, floor: datetime.datetime) -> None:
        """Fire each slot after ``floor`` as it comes, until cancelled."""
        try:
            await self._fire_each(running, floor)
        finally:
            if self.running.get(running.plan.name) is running:
                del self.running[running.plan.name]  # a schedule that ended is not declared

    async def _fire_each(self, running: _Running, floor: datetime.datetime) -> None:
        plan = running.plan
        limit = MAX_CATCH_UP if plan.catch_up == "all" else 1
        with running.scope:
            while True:
                remaining = _us(plan.slots.after(floor)) - time.time_ns() // 1000
                if remaining > 0:
                    await anyio.sleep(remaining / 1e6)
                # Slots passed while this process was too busy to wake follow catch_up too.
                due = plan.slots.missed(floor, _now(), limit)
                if not due:
                    continue  # woken a moment early
                try:
                    await self._fire(plan, due, catch_up=False)
                except (PoolClosedError, JournalWriteError):
                    return  # the pool is closing or has failed: nothing more to schedule
                except HarnpoolError as exc:
                    # The database failed, or a full queue refused the task: this
                    # slot is skipped (another process may fire it), not the schedule.
                    emit(
                        "error",
                        "schedule.submit_failed",
                        pool=self.path,
                        schedule=plan.name,
                        slot=due[-1].isoformat(),
                        error=str(exc),
                    )
                floor = due[-1]

    async def _fire(
        self, plan: Plan, slots: list[datetime.datetime], *, catch_up: bool
    ) -> list[str]:
        ids = await self.submit_many([Job(plan.fn, slot, key=plan.key(slot)) for slot in slots])
        emit(
            "info",
            "schedule.fired",
            pool=self.path,
            schedule=plan.name,
            slots=[slot.isoformat() for slot in slots],
            task_ids=ids,
            catch_up=catch_up,
        )
        return ids
