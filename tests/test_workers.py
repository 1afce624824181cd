"""Workers and threads: started as work needs them, bounded by max_concurrent, thread slots held."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import harnpool


async def double(n: int) -> int:
    return 2 * n


class TestWorkersOnDemand:
    async def test_a_huge_max_concurrent_starts_one_worker_for_one_task(
        self, journal_path: Path
    ) -> None:
        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, max_concurrent=100_000) as pool:
                assert pool.statistics().workers <= 1  # a spare one may wait for work
                assert await pool.wait(await pool.submit(double, 21)) == 42
                assert pool.statistics().workers <= 2

    async def test_workers_grow_with_concurrent_work_up_to_max_concurrent(
        self, journal_path: Path
    ) -> None:
        release = anyio.Event()
        started = 0

        async def hold() -> None:
            nonlocal started
            started += 1
            await release.wait()

        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, max_concurrent=3) as pool:
                ids = await pool.submit_many([harnpool.Job(hold) for _ in range(7)])
                while started < 3:
                    await anyio.lowlevel.checkpoint()
                for _ in range(10):  # room for a fourth to start, were it allowed
                    await anyio.lowlevel.checkpoint()
                stats = pool.statistics()
                assert (stats.workers, stats.running, stats.queued, started) == (3, 3, 4, 3)
                release.set()
                for task_id in ids:
                    await pool.wait(task_id)
                assert pool.statistics().workers == 3

    async def test_ready_tasks_still_run_in_priority_order(self, journal_path: Path) -> None:
        order: list[int] = []

        async def note(n: int) -> None:
            order.append(n)

        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
                jobs = [harnpool.Job(note, p, priority=p) for p in (1, 5, 3, 4, 2)]
                for task_id in await pool.submit_many(jobs):
                    await pool.wait(task_id)
        assert order == [5, 4, 3, 2, 1]


class TestThreadSlots:
    async def test_abandoned_threads_keep_their_slots_until_they_return(
        self, journal_path: Path
    ) -> None:
        release = threading.Event()
        lock = threading.Lock()
        inside = peak = 0

        def block(n: int) -> int:
            nonlocal inside, peak
            with lock:
                inside += 1
                peak = max(peak, inside)
            release.wait(30)  # bounded: a broken test must not leave the thread behind
            with lock:
                inside -= 1
            return n

        with anyio.fail_after(20):
            async with harnpool.open_pool(journal_path, max_concurrent=2) as pool:
                ids = [await pool.submit(block, n, timeout=0.05) for n in range(6)]
                for task_id in ids[:2]:
                    with pytest.raises(harnpool.TaskFailed) as caught:
                        await pool.wait(task_id)
                    assert caught.value.error_type == "builtins.TimeoutError"
                # Both threads still run: the next tasks wait for a slot rather than
                # start a third thread (which they would do at once, then time out).
                # A window for a third thread to show up; with the bound it never does.
                with anyio.move_on_after(0.3):
                    while inside < 3:  # noqa: ASYNC110 - a count other threads change
                        await anyio.sleep(0.01)
                assert pool.statistics().threads == 2
                assert inside == 2
                release.set()
                for task_id in ids[2:]:
                    assert await pool.wait(task_id) in range(6)
        assert peak == 2
        assert inside == 0

    async def test_a_thread_slot_is_given_back_after_a_failure(self, journal_path: Path) -> None:
        def fail() -> None:
            raise LookupError("no")

        def ok() -> str:
            return "ok"

        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
                for _ in range(3):
                    with pytest.raises(harnpool.TaskFailed):
                        await pool.wait(await pool.submit(fail))
                assert await pool.wait(await pool.submit(ok)) == "ok"
                assert pool.statistics().threads == 0


class TestOneScopePerWorker:
    """A worker runs attempt after attempt in one cancel scope until one is cancelled."""

    async def test_a_timeout_does_not_outlive_its_attempt(self, journal_path: Path) -> None:
        async def quick() -> str:
            return "quick"

        async def slower() -> str:
            await anyio.sleep(0.3)  # longer than the first task's timeout
            return "slower"

        async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
            with anyio.fail_after(10):
                first = await pool.submit(quick, timeout=0.05)
                second = await pool.submit(slower)
                assert await pool.wait(first) == "quick"
                assert await pool.wait(second) == "slower"

    async def test_the_worker_runs_on_after_a_cancelled_and_a_failed_attempt(
        self, journal_path: Path
    ) -> None:
        started = anyio.Event()

        async def blocked() -> None:
            started.set()
            await anyio.sleep_forever()

        async def broken() -> None:
            raise LookupError("broken")

        async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
            with anyio.fail_after(10):
                stuck = await pool.submit(blocked)
                await started.wait()
                assert await pool.cancel(stuck)
                failing = await pool.submit(broken)
                with pytest.raises(harnpool.TaskFailed):
                    await pool.wait(failing)
                assert await pool.wait(await pool.submit(double, 4)) == 8
            assert pool.statistics().workers == 1
