"""Periodic tasks on every storage: each slot fires once, across restarts and racing pools.

The scheduled function is registered and module-level, as every storage
requires; it notes each slot it is run for in ``_ticks``.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import harnpool
from harnpool import Pool

from .conftest import OpenOn

_ticks: list[datetime.datetime] = []
_want: dict[str, Any] = {}

EVERY = 0.2
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    _ticks.clear()
    _want.clear()
    yield
    _ticks.clear()
    _want.clear()


@harnpool.task(name="tests.storage.tick")
async def tick(slot: datetime.datetime) -> str:
    _ticks.append(slot)
    if len(_ticks) >= _want.get("count", 0) and "enough" in _want:
        _want["enough"].set()
    return slot.isoformat()


@harnpool.task(name="tests.storage.untyped")
async def untyped(slot: Any) -> None:
    """Not annotated as a datetime: after a restart its slot would arrive as a str."""


async def plain(slot: datetime.datetime) -> None:
    """Not registered."""


async def ticked(count: int) -> None:
    """Wait until ``count`` slots in all have run."""
    _want["count"] = count
    _want["enough"] = enough = anyio.Event()
    if len(_ticks) < count:
        with anyio.fail_after(20):
            await enough.wait()


def _us(slot: datetime.datetime) -> int:
    return (slot - _EPOCH) // datetime.timedelta(microseconds=1)


def _slots_between(after: datetime.datetime, until: datetime.datetime) -> list[datetime.datetime]:
    """The slots of EVERY in (after, until]."""
    step = round(EVERY * 1e6)
    first, last = _us(after) // step + 1, _us(until) // step
    return [_EPOCH + datetime.timedelta(microseconds=k * step) for k in range(first, last + 1)]


def _scheduled(pool: Pool, name: str) -> dict[str, harnpool.TaskInfo]:
    return {i.key: i for i in pool.tasks() if i.key is not None and i.key.startswith(name + "@")}


def _only_shared(open_on: OpenOn) -> None:
    if getattr(open_on, "__name__", "") != "open_shared":
        pytest.skip("only a PostgreSQL pool is opened by two pools at once")


class TestFiring:
    async def test_each_slot_fires_once_with_its_aligned_utc_time(self, open_on: OpenOn) -> None:
        async with open_on(max_concurrent=2) as pool:
            # Never fired before: there is nothing to catch up.
            assert await pool.schedule("beat", tick, every=EVERY) == []
            await ticked(3)
            assert pool.unschedule("beat")
            assert not pool.unschedule("beat")
        async with open_on() as pool:
            scheduled = _scheduled(pool, "beat")
        assert len(set(_ticks)) == len(_ticks) >= 3
        step = round(EVERY * 1e6)
        for slot in _ticks:
            assert slot.utcoffset() == datetime.timedelta(0)
            assert _us(slot) % step == 0
        assert set(scheduled) == {f"beat@{slot.isoformat()}" for slot in _ticks}
        assert {info.status for info in scheduled.values()} == {harnpool.Status.COMPLETED}

    async def test_two_pools_racing_on_one_database_fire_each_slot_once(
        self, open_on: OpenOn
    ) -> None:
        _only_shared(open_on)
        async with open_on(max_concurrent=4) as one, open_on(max_concurrent=4) as two:
            await one.schedule("race", tick, every=EVERY)
            await two.schedule("race", tick, every=EVERY)
            await ticked(5)
        assert len(set(_ticks)) == len(_ticks) >= 5

    async def test_leaving_the_block_ends_the_schedules_at_once(self, open_on: OpenOn) -> None:
        with anyio.fail_after(10):
            async with open_on() as pool:
                await pool.schedule("hourly", tick, every=datetime.timedelta(hours=1))
            with pytest.raises(harnpool.PoolClosedError):
                await pool.schedule("late", tick, every=EVERY)
        assert _ticks == []


class TestCatchUp:
    @pytest.mark.parametrize("catch_up", ["latest", "all", "none"])
    async def test_slots_missed_while_no_pool_ran_follow_catch_up(
        self, open_on: OpenOn, catch_up: harnpool.CatchUp
    ) -> None:
        async with open_on() as pool:
            await pool.schedule("cu", tick, every=EVERY)
            await ticked(1)
        last = max(_ticks)
        # The wall clock itself must pass three slots with no pool open.
        await anyio.sleep(max(0.0, last.timestamp() + 3.5 * EVERY - time.time()))
        _ticks.clear()
        async with open_on() as pool:
            before = datetime.datetime.fromtimestamp(time.time(), datetime.UTC)
            ids = await pool.schedule("cu", tick, every=EVERY, catch_up=catch_up)
            after = datetime.datetime.fromtimestamp(time.time(), datetime.UTC)
            pool.unschedule("cu")
            caught = {pool.info(task_id).key for task_id in ids}
        missed = _slots_between(last, before)
        assert len(missed) >= 3
        possible = {f"cu@{slot.isoformat()}" for slot in _slots_between(last, after)}
        if catch_up == "none":
            assert ids == []
        elif catch_up == "latest":
            assert len(ids) == 1
            assert caught <= possible
            assert caught.isdisjoint(f"cu@{slot.isoformat()}" for slot in missed[:-1])
        else:
            assert {f"cu@{slot.isoformat()}" for slot in missed} <= caught <= possible
        # The slots caught up on ran, each once.
        assert len(set(_ticks)) == len(_ticks)
        assert {f"cu@{slot.isoformat()}" for slot in _ticks} >= caught


class TestArguments:
    @pytest.mark.parametrize(
        ("arguments", "error", "words"),
        [
            ({"every": 1, "cron": "* * * * *"}, TypeError, "not both"),
            ({}, TypeError, "every= or cron="),
            ({"fn": plain, "every": 1}, TypeError, "harnpool.task"),
            ({"fn": untyped, "every": 1}, TypeError, "datetime"),
            ({"fn": "tick", "every": 1}, TypeError, "fn"),
            ({"cron": "61 * * * *"}, harnpool.InvalidCronError, "'61 \\* \\* \\* \\*'"),
            ({"cron": "every day"}, harnpool.InvalidCronError, "'every day'"),
            ({"cron": 5}, TypeError, "cron"),
            ({"every": 0}, ValueError, "every"),
            ({"every": -1.5}, ValueError, "every"),
            ({"every": datetime.timedelta(0)}, ValueError, "every"),
            ({"every": float("nan")}, ValueError, "every"),
            ({"every": 1e-9}, ValueError, "every"),
            ({"every": True}, TypeError, "every"),
            ({"every": "5m"}, TypeError, "every"),
            ({"every": 1, "catch_up": "some"}, ValueError, "catch_up"),
            ({"every": 1, "name": ""}, ValueError, "name"),
            ({"every": 1, "name": "a@b"}, ValueError, "name"),
            ({"every": 1, "name": 5}, TypeError, "name"),
        ],
    )
    async def test_a_wrong_argument_is_refused_before_anything_is_written(
        self, open_on: OpenOn, arguments: dict[str, Any], error: type[Exception], words: str
    ) -> None:
        arguments = {"name": "s", "fn": tick, **arguments}
        async with open_on() as pool:
            with pytest.raises(error, match=words):
                await pool.schedule(arguments.pop("name"), arguments.pop("fn"), **arguments)
            assert pool.tasks() == []
            # Nothing was declared either: the name is free.
            await pool.schedule("s", tick, every=3600)

    async def test_a_bad_cron_error_is_a_value_error_naming_the_expression(
        self, open_on: OpenOn
    ) -> None:
        async with open_on() as pool:
            with pytest.raises(ValueError, match="cron='\\* \\* \\*'") as info:
                await pool.schedule("s", tick, cron="* * *")
        assert isinstance(info.value, harnpool.InvalidCronError)
        assert (info.value.expression, info.value.schedule) == ("* * *", "s")

    async def test_a_name_declared_twice_is_refused_until_unscheduled(
        self, open_on: OpenOn
    ) -> None:
        async with open_on() as pool:
            await pool.schedule("s", tick, every=3600)
            with pytest.raises(ValueError, match="already declared"):
                await pool.schedule("s", tick, cron="0 0 * * *")
            assert pool.unschedule("s")
            await pool.schedule("s", tick, cron="0 0 * * *")
            assert pool.tasks() == []
