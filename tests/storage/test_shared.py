"""The pool's core behaviours, run against every storage through one fixture."""

from __future__ import annotations

import anyio
import pytest

import harnpool
from harnpool import Job

from .conftest import OpenOn


async def double(n: int) -> int:
    return n * 2


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
    async def test_a_key_runs_once_in_the_pool_and_after_a_reopen(self, open_on: OpenOn) -> None:
        runs: list[int] = []

        async def once(n: int) -> int:
            runs.append(n)
            return n

        async with open_on() as pool:
            first = await pool.submit(once, 1, key="k")
            assert await pool.submit(once, 2, key="k") == first
            assert await pool.wait(first) == 1
        async with open_on() as pool:
            assert await pool.submit(once, 3, key="k") == first
            assert await pool.wait(first) == 1
        assert runs == [1]


class TestOrder:
    async def test_higher_priority_runs_first(self, open_on: OpenOn) -> None:
        gate = anyio.Event()
        order: list[int] = []

        async def held() -> None:
            await gate.wait()

        async def note(n: int) -> None:
            order.append(n)

        async with open_on(max_concurrent=1) as pool:
            await pool.submit(held)
            ids = [await pool.submit(note, p, priority=p) for p in (1, 3, 2)]
            gate.set()
            for task_id in ids:
                await pool.wait(task_id)
        assert order == [3, 2, 1]


class TestRetryAndCancel:
    async def test_a_failing_attempt_is_retried_until_it_succeeds(self, open_on: OpenOn) -> None:
        attempts: list[int] = []

        async def flaky() -> str:
            attempts.append(1)
            if len(attempts) < 3:
                raise ValueError("not yet")
            return "done"

        async with open_on(retries=2, retry_backoff=0.0, retry_backoff_max=0.0) as pool:
            task_id = await pool.submit(flaky)
            with anyio.fail_after(10):
                assert await pool.wait(task_id) == "done"
            assert pool.info(task_id).attempts == 3

    async def test_a_queued_task_is_cancelled_durably(self, open_on: OpenOn) -> None:
        gate = anyio.Event()

        async def held() -> None:
            await gate.wait()

        async with open_on(max_concurrent=1) as pool:
            await pool.submit(held)
            task_id = await pool.submit(double, 1)
            assert await pool.cancel(task_id)
            with pytest.raises(harnpool.TaskCancelled):
                await pool.wait(task_id)
            gate.set()
        async with open_on() as pool:
            assert pool.info(task_id).status is harnpool.Status.CANCELLED


class TestOwnershipAndRecovery:
    async def test_a_second_pool_cannot_open_what_one_holds(self, open_on: OpenOn) -> None:
        async with open_on():
            with pytest.raises(harnpool.JournalLockedError):
                async with open_on():
                    pass  # pragma: no cover - never opened
        async with open_on():
            pass  # released on close

    async def test_a_task_left_running_is_queued_again_on_reopen(self, open_on: OpenOn) -> None:
        started = anyio.Event()

        async def stuck() -> None:
            started.set()
            await anyio.sleep_forever()

        with pytest.raises(RuntimeError, match="leaving"):
            async with open_on() as pool:
                task_id = await pool.submit(stuck)
                await started.wait()
                raise RuntimeError("leaving")
        async with open_on() as pool:
            assert pool.recovery.requeued == (task_id,)
            info = pool.info(task_id)
            assert info.status is harnpool.Status.QUEUED
            assert (info.recoveries, info.attached) == (1, False)
