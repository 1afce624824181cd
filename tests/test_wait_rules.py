"""Waits that could never return raise at once: an unattached task, a wait deadlock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import harnpool
from harnpool import Status


async def hang() -> None:
    await anyio.sleep_forever()


async def double(n: int) -> int:
    return 2 * n


class Leave(Exception):
    pass


class TestUnattached:
    async def test_wait_on_a_recovered_task_with_no_function_raises(
        self, journal_path: Path
    ) -> None:
        with anyio.fail_after(10):
            with pytest.raises(Leave):
                # One slot: "later" stays queued behind "busy".
                async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
                    await pool.submit(hang, key="busy")
                    task_id = await pool.submit(double, 4, key="later")
                    raise Leave
            async with harnpool.open_pool(journal_path) as pool:
                with pytest.raises(harnpool.TaskNotAttached) as caught:
                    await pool.wait(task_id)
                assert (caught.value.task_id, caught.value.key) == (task_id, "later")
                assert "submit it again with its key" in str(caught.value)
                await pool.cancel(pool.tasks()[0].id)
                # Attached again by its key, it runs and can be waited for.
                assert await pool.submit(double, 4, key="later") == task_id
                assert await pool.wait(task_id) == 8


class TestDeadlock:
    async def test_a_task_waiting_for_a_queued_one_in_the_only_slot_fails(
        self, journal_path: Path
    ) -> None:
        ids: dict[str, str] = {}
        known = anyio.Event()

        async def outer() -> Any:
            await known.wait()
            return await pool.wait(ids["inner"])

        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
                ids["outer"], ids["inner"] = await pool.submit_many(
                    [harnpool.Job(outer, priority=1), harnpool.Job(double, 5)]
                )
                known.set()
                with pytest.raises(harnpool.TaskFailed) as caught:
                    await pool.wait(ids["outer"])
                assert caught.value.error_type == "harnpool.WaitDeadlock"
                cause = caught.value.__cause__
                assert isinstance(cause, harnpool.WaitDeadlock)
                assert (cause.task_id, cause.waiter_id) == (ids["inner"], ids["outer"])
                assert "max_concurrent=1" in cause.reason
                assert await pool.wait(ids["inner"]) == 10  # the slot was freed

    async def test_a_task_that_waits_for_itself_fails(self, journal_path: Path) -> None:
        mine: list[str] = []
        known = anyio.Event()

        async def me() -> Any:
            await known.wait()
            return await pool.wait(mine[0])

        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, max_concurrent=4) as pool:
                mine.append(await pool.submit(me))
                known.set()
                with pytest.raises(harnpool.TaskFailed) as caught:
                    await pool.wait(mine[0])
                assert caught.value.error_type == "harnpool.WaitDeadlock"
                assert "itself" in caught.value.error_message

    async def test_two_tasks_waiting_for_each_other_are_refused(self, journal_path: Path) -> None:
        ids: dict[str, str] = {}
        known = anyio.Event()
        a_waits = anyio.Event()

        async def a() -> Any:
            await known.wait()
            a_waits.set()
            return await pool.wait(ids["b"])

        async def b() -> Any:
            await a_waits.wait()
            await anyio.lowlevel.checkpoint()  # a is blocked in wait() by now
            return await pool.wait(ids["a"])

        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, max_concurrent=3) as pool:
                ids["a"], ids["b"] = await pool.submit_many([harnpool.Job(a), harnpool.Job(b)])
                known.set()
                with pytest.raises(harnpool.TaskFailed) as caught:
                    await pool.wait(ids["b"])
                assert caught.value.error_type == "harnpool.WaitDeadlock"
                assert "directly or through others" in caught.value.error_message
                with pytest.raises(harnpool.TaskFailed):  # a waited for b, which failed
                    await pool.wait(ids["a"])

    async def test_waiting_for_a_task_that_has_a_free_slot_works(self, journal_path: Path) -> None:
        ids: dict[str, str] = {}
        known = anyio.Event()

        async def outer() -> Any:
            await known.wait()
            return await pool.wait(ids["inner"]) + 1

        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, max_concurrent=2) as pool:
                ids["outer"], ids["inner"] = await pool.submit_many(
                    [harnpool.Job(outer, priority=1), harnpool.Job(double, 5)]
                )
                known.set()
                assert await pool.wait(ids["outer"]) == 11
                assert pool.info(ids["inner"]).status is Status.COMPLETED
