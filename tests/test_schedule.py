"""Schedules: slot arithmetic, cron through cronsim, the catch-up bound, the blocking pool.

What every storage does with schedules is tested in tests/storage/test_schedules.py.
"""

from __future__ import annotations

import contextvars
import datetime
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

import harnpool
from harnpool import _schedule
from harnpool._schedule import _Cron, _Every

UTC = datetime.UTC
_seen: list[datetime.datetime] = []


@harnpool.task(name="tests.schedule.seen")
def seen(slot: datetime.datetime) -> None:
    _seen.append(slot)


_beat: dict[str, anyio.Event] = {}


@harnpool.task(name="tests.schedule.beat")
async def beat(slot: datetime.datetime) -> None:
    _seen.append(slot)
    _beat["event"].set()


#: Set by the thread that declares a schedule, read by its slots' tasks.
declared_by: contextvars.ContextVar[str] = contextvars.ContextVar("declared_by", default="unset")
_context_seen: list[str] = []
_context_ran = threading.Event()


@harnpool.task(name="tests.schedule.context")
def read_context(slot: datetime.datetime) -> None:
    _context_seen.append(declared_by.get())
    _context_ran.set()


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


class TestSlots:
    def test_every_is_aligned_to_the_epoch(self) -> None:
        five_minutes = _Every(300_000_000)
        assert five_minutes.after(at("2026-01-01 00:07:12.5")) == at("2026-01-01 00:10")
        assert five_minutes.after(at("2026-01-01 00:10")) == at("2026-01-01 00:15")

    def test_every_missed_counts_the_slots_after_the_last_up_to_now(self) -> None:
        five_minutes = _Every(300_000_000)
        last, now = at("2026-01-01 00:05"), at("2026-01-01 00:20")
        assert five_minutes.missed(last, now, 10) == [
            at("2026-01-01 00:10"),
            at("2026-01-01 00:15"),
            at("2026-01-01 00:20"),
        ]
        assert five_minutes.missed(last, now, 1) == [at("2026-01-01 00:20")]
        assert five_minutes.missed(now, now, 10) == []

    def test_cron_slots_match_every_and_missed_keeps_the_newest(self) -> None:
        from cronsim import CronSim

        cron = _Cron("*/5 * * * *", CronSim)
        every = _Every(300_000_000)
        last, now = at("2026-01-01 00:05"), at("2026-01-01 00:20")
        assert cron.after(at("2026-01-01 00:07:12.5")) == at("2026-01-01 00:10")
        assert cron.missed(last, now, 10) == every.missed(last, now, 10)
        assert cron.missed(last, now, 2) == [at("2026-01-01 00:15"), at("2026-01-01 00:20")]
        assert cron.missed(now, now, 10) == []


async def test_catch_up_all_is_bounded_to_the_newest_slots(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_schedule, "MAX_CATCH_UP", 4)
    old = at("2020-01-01 00:00")
    async with harnpool.open_pool(journal_path) as pool:
        # As if the schedule had last fired in 2020, every day since.
        await pool.submit(seen, old, key=f"daily@{old.isoformat()}")
        ids = await pool.schedule("daily", seen, every=datetime.timedelta(days=1), catch_up="all")
        assert len(ids) == 4
        keys = [pool.info(task_id).key for task_id in ids]
        pool.unschedule("daily")
    today = datetime.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert keys == [
        f"daily@{(today - datetime.timedelta(days=d)).isoformat()}" for d in (3, 2, 1, 0)
    ]


async def test_a_cron_schedule_fires_on_its_second(journal_path: Path) -> None:
    _seen.clear()
    _beat["event"] = fired = anyio.Event()
    async with harnpool.open_pool(journal_path) as pool:
        await pool.schedule("each-second", beat, cron="* * * * * *")
        with anyio.fail_after(10):
            await fired.wait()
        pool.unschedule("each-second")
    assert _seen[0].microsecond == 0
    assert _seen[0].utcoffset() == datetime.timedelta(0)


async def test_cron_without_cronsim_says_what_to_install(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cronsim", None)
    async with harnpool.open_pool(journal_path) as pool:
        with pytest.raises(harnpool.CronUnavailableError, match=r"harnpool\[cron\]") as info:
            await pool.schedule("s", seen, cron="* * * * *")
        assert isinstance(info.value, ImportError)
        # every= needs nothing more.
        await pool.schedule("s", seen, every=3600)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_blocking_pool_schedules_and_unschedules(journal_path: Path, backend: str) -> None:
    with harnpool.open_blocking_pool(journal_path, backend=backend) as pool:  # type: ignore[arg-type]
        assert pool.schedule("s", seen, every=3600) == []
        with pytest.raises(ValueError, match="already declared"):
            pool.schedule("s", seen, every=3600)
        assert pool.unschedule("s")
        assert not pool.unschedule("s")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_blocking_pools_slots_run_in_the_declaring_threads_context(
    journal_path: Path, backend: str
) -> None:
    _context_seen.clear()
    _context_ran.clear()
    token = declared_by.set("the declaring thread")
    try:
        with harnpool.open_blocking_pool(journal_path, backend=backend) as pool:  # type: ignore[arg-type]
            pool.schedule("ctx", read_context, every=0.05)
            assert _context_ran.wait(10)
            pool.unschedule("ctx")
    finally:
        declared_by.reset(token)
    assert _context_seen[0] == "the declaring thread"


async def test_a_schedule_that_ended_is_no_longer_declared(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended = anyio.Event()

    async def closed(*args: Any, **kwargs: Any) -> list[str]:
        ended.set()
        raise harnpool.PoolClosedError("closed")

    async with harnpool.open_pool(journal_path) as pool:
        monkeypatch.setattr(_schedule.Schedules, "_fire", closed)
        with anyio.fail_after(10):
            await pool.schedule("s", seen, every=0.05)
            await ended.wait()
            await anyio.wait_all_tasks_blocked()
        assert not pool.unschedule("s")


async def test_a_slot_a_full_queue_refuses_is_skipped_and_the_schedule_goes_on(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = anyio.Event()
    emit = _schedule.emit  # type: ignore[attr-defined]

    def watch(level: str, event: str, **fields: Any) -> None:
        if event == "schedule.submit_failed":
            refused.set()
        emit(level, event, **fields)

    monkeypatch.setattr(_schedule, "emit", watch)
    gate, started = anyio.Event(), anyio.Event()

    async def hold() -> None:
        started.set()
        await gate.wait()

    _seen.clear()
    _beat["event"] = fired = anyio.Event()
    with anyio.fail_after(20):
        async with harnpool.open_pool(
            journal_path, max_concurrent=1, max_queued=1, on_full="reject"
        ) as pool:
            await pool.submit(hold)
            await started.wait()
            await pool.submit(hold)  # queued behind the first: the queue is full
            await pool.schedule("s", beat, every=0.1)
            await refused.wait()
            gate.set()
            await fired.wait()
            pool.unschedule("s")
