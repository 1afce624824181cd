"""The pool's core behaviours, run against every storage through one fixture.

The task functions are module-level, as a pool shared through PostgreSQL
requires; what a test observes goes through ``_state`` under a token of its own.
"""

from __future__ import annotations

import datetime
import time

import anyio
import pytest

import harnpool
from harnpool import Job
from tests.task_state import state as _state

from .conftest import OpenOn, only_exclusive


async def double(n: int) -> int:
    return n * 2


async def once(token: str, n: int) -> int:
    _state.setdefault(token + "runs", []).append(n)
    return n


async def held(token: str) -> None:
    started = _state.get(token + "started")
    if started is not None:
        started.set()
    await _state[token + "gate"].wait()


async def note(token: str, n: int) -> None:
    _state.setdefault(token + "order", []).append(n)


async def flaky(token: str) -> str:
    attempts = _state.setdefault(token + "attempts", [])
    attempts.append(1)
    if len(attempts) < 3:
        raise ValueError("not yet")
    return "done"


@harnpool.task(name="tests.storage.stamp")
async def stamp(token: str, n: int) -> float:
    """Note ``n`` and return when the attempt started (the wall clock due times use)."""
    _state.setdefault(token + "order", []).append(n)
    return time.time()


async def stuck(token: str) -> None:
    _state[token + "started"].set()
    await anyio.sleep_forever()


class TestSubmitAndWait:
    async def test_a_result_is_returned_and_kept_across_a_reopen(self, open_on: OpenOn) -> None:
        async with open_on() as pool:
            assert pool.recovery.created
            task_id = await pool.submit(double, 21)
            assert await pool.wait(task_id) == 42
        async with open_on() as pool:
            assert not pool.recovery.created
            assert pool.info(task_id).status is harnpool.Status.COMPLETED
            assert await pool.wait(task_id) == 42
            assert pool.statistics().flushes == 0

    async def test_submit_many_gives_ids_in_order(self, open_on: OpenOn) -> None:
        async with open_on(max_concurrent=4) as pool:
            ids = await pool.submit_many(Job(double, n) for n in range(10))
            assert [await pool.wait(i) for i in ids] == [2 * n for n in range(10)]
            assert len(set(ids)) == 10


class TestKeys:
    async def test_a_key_runs_once_in_the_pool_and_after_a_reopen(
        self, open_on: OpenOn, token: str
    ) -> None:
        async with open_on() as pool:
            first = await pool.submit(once, token, 1, key="k")
            assert await pool.submit(once, token, 2, key="k") == first
            assert await pool.wait(first) == 1
        async with open_on() as pool:
            assert await pool.submit(once, token, 3, key="k") == first
            assert await pool.wait(first) == 1
        assert _state[token + "runs"] == [1]


class TestOrder:
    async def test_higher_priority_runs_first(self, open_on: OpenOn, token: str) -> None:
        gate = _state[token + "gate"] = anyio.Event()
        started = _state[token + "started"] = anyio.Event()
        async with open_on(max_concurrent=1) as pool:
            await pool.submit(held, token)
            # Held first: a shared pool's claimer may not have taken it yet.
            await started.wait()
            ids = [await pool.submit(note, token, p, priority=p) for p in (1, 3, 2)]
            gate.set()
            for task_id in ids:
                await pool.wait(task_id)
        assert _state[token + "order"] == [3, 2, 1]


class TestRetryAndCancel:
    async def test_a_failing_attempt_is_retried_until_it_succeeds(
        self, open_on: OpenOn, token: str
    ) -> None:
        async with open_on(retries=2, retry_backoff=0.0, retry_backoff_max=0.0) as pool:
            task_id = await pool.submit(flaky, token)
            with anyio.fail_after(10):
                assert await pool.wait(task_id) == "done"
            assert pool.info(task_id).attempts == 3

    async def test_a_queued_task_is_cancelled_durably(self, open_on: OpenOn, token: str) -> None:
        gate = _state[token + "gate"] = anyio.Event()
        async with open_on(max_concurrent=1) as pool:
            await pool.submit(held, token)
            task_id = await pool.submit(double, 1)
            assert await pool.cancel(task_id)
            with pytest.raises(harnpool.TaskCancelled):
                await pool.wait(task_id)
            gate.set()
        async with open_on() as pool:
            assert pool.info(task_id).status is harnpool.Status.CANCELLED


class TestOwnershipAndRecovery:
    async def test_a_second_pool_cannot_open_what_one_holds(self, open_on: OpenOn) -> None:
        only_exclusive(open_on, "any number of them open one pool at once")
        async with open_on():
            with pytest.raises(harnpool.JournalLockedError):
                async with open_on():
                    pass  # pragma: no cover - never opened
        async with open_on():
            pass  # released on close

    async def test_a_task_left_running_is_queued_again_on_reopen(
        self, open_on: OpenOn, token: str
    ) -> None:
        only_exclusive(
            open_on,
            "a task left running is reclaimed once its lease expires, not on the next open "
            "(tests/test_postgres_pool.py tests that)",
        )
        started = _state[token + "started"] = anyio.Event()
        with pytest.raises(RuntimeError, match="leaving"):
            async with open_on() as pool:
                task_id = await pool.submit(stuck, token)
                await started.wait()
                raise RuntimeError("leaving")
        async with open_on() as pool:
            assert pool.recovery.requeued == (task_id,)
            info = pool.info(task_id)
            assert info.status is harnpool.Status.QUEUED
            assert (info.recoveries, info.attached) == (1, False)


class TestDelay:
    async def test_a_delayed_task_is_queued_and_starts_once_due(
        self, open_on: OpenOn, token: str
    ) -> None:
        async with open_on() as pool:
            before = time.time()
            task_id = await pool.submit(stamp, token, 1, delay=0.3)
            info = pool.info(task_id)
            assert info.status is harnpool.Status.QUEUED
            due = info.not_before
            assert due is not None
            # The database keeps microseconds.
            assert before + 0.3 - 1e-5 <= due <= time.time() + 0.3 + 1e-5
            with anyio.fail_after(10):
                started = await pool.wait(task_id)
            assert started >= due - 1e-5

    async def test_run_at_is_the_due_time_in_any_time_zone(
        self, open_on: OpenOn, token: str
    ) -> None:
        zone = datetime.timezone(datetime.timedelta(hours=-5))
        run_at = datetime.datetime.now(zone) + datetime.timedelta(seconds=0.2)
        async with open_on() as pool:
            task_id = await pool.submit(stamp, token, 1, run_at=run_at)
            assert pool.info(task_id).not_before == pytest.approx(run_at.timestamp(), abs=1e-5)
            with anyio.fail_after(10):
                assert await pool.wait(task_id) >= run_at.timestamp() - 1e-5
            past = await pool.submit(stamp, token, 2, run_at=run_at - datetime.timedelta(days=1))
            with anyio.fail_after(10):
                await pool.wait(past)

    async def test_tasks_due_together_run_by_priority_then_in_submission_order(
        self, open_on: OpenOn, token: str
    ) -> None:
        run_at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=0.3)
        async with open_on(max_concurrent=1) as pool:
            ids = await pool.submit_many(
                Job(stamp, token, n, priority=p, run_at=run_at)
                for n, p in ((10, 1), (30, 3), (20, 2), (31, 3))
            )
            with anyio.fail_after(10):
                for task_id in ids:
                    await pool.wait(task_id)
        assert _state[token + "order"] == [30, 31, 20, 10]

    async def test_the_due_time_is_kept_across_a_reopen(self, open_on: OpenOn, token: str) -> None:
        found: list[float | None] = []
        with pytest.raises(RuntimeError, match="leaving"):
            async with open_on() as pool:
                task_id = await pool.submit(stamp, token, 1, delay=0.5)
                found.append(pool.info(task_id).not_before)
                raise RuntimeError("leaving")
        assert token + "order" not in _state
        (due,) = found
        assert due is not None
        async with open_on() as pool:
            assert pool.info(task_id).not_before == pytest.approx(due, abs=1e-5)
            with anyio.fail_after(10):
                assert await pool.wait(task_id) >= due - 1e-5

    async def test_a_delayed_task_is_cancelled_before_it_is_due(
        self, open_on: OpenOn, token: str
    ) -> None:
        with anyio.fail_after(10):
            async with open_on() as pool:
                task_id = await pool.submit(stamp, token, 1, delay=3600)
                assert await pool.cancel(task_id)
                with pytest.raises(harnpool.TaskCancelled):
                    await pool.wait(task_id)
            # Leaving the block did not wait for the hour.
            async with open_on() as pool:
                assert pool.info(task_id).status is harnpool.Status.CANCELLED
        assert token + "order" not in _state
