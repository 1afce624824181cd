"""The default ``max_concurrent`` (100) runs async tasks side by side, and plain functions
never take more threads than anyio's default thread limiter allows."""

from __future__ import annotations

import inspect
import threading
from pathlib import Path

import anyio
import anyio.to_thread

import harnpool
from harnpool._threads import thread_slots

DEADLINE = 10


def test_open_pool_and_open_blocking_pool_default_to_100() -> None:
    for opener in (harnpool.open_pool, harnpool.open_blocking_pool):
        assert inspect.signature(opener).parameters["max_concurrent"].default == 100


async def test_a_default_pool_runs_many_async_tasks_at_once(journal_path: Path) -> None:
    count = 20
    started = 0
    all_started = anyio.Event()

    async def meet() -> int:
        # Returns only once every task is running: one at a time would never get there.
        nonlocal started
        started += 1
        if started == count:
            all_started.set()
        await all_started.wait()
        return started

    with anyio.fail_after(DEADLINE):
        async with harnpool.open_pool(journal_path) as pool:
            assert pool.statistics().max_concurrent == 100
            ids = [await pool.submit(meet) for _ in range(count)]
            assert [await pool.wait(task_id) for task_id in ids] == [count] * count


async def test_plain_functions_never_take_more_threads_than_the_default_limiter(
    journal_path: Path,
) -> None:
    tokens = 3
    count = 12
    anyio.to_thread.current_default_thread_limiter().total_tokens = tokens
    lock = threading.Lock()
    release = threading.Event()
    inside = peak = 0

    def block() -> int:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        try:
            release.wait(DEADLINE)
        finally:
            with lock:
                inside -= 1
        return 1

    try:
        with anyio.fail_after(DEADLINE):
            async with harnpool.open_pool(journal_path) as pool:
                ids = [await pool.submit(block) for _ in range(count)]
                # A worker asks for a thread in the step that records its task
                # running: once all are running, every one has asked. Threads
                # change the counts: no event to wait on here.
                while pool.statistics().running < count or inside < tokens:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
                assert pool.statistics().threads == tokens
                release.set()
                assert sum([await pool.wait(task_id) for task_id in ids]) == count
    finally:
        release.set()
    assert peak == tokens


async def test_thread_slots_are_max_concurrent_bounded_by_the_default_limiter() -> None:
    default = anyio.to_thread.current_default_thread_limiter().total_tokens
    assert default == 40  # anyio's own default
    assert thread_slots(100) == 40
    assert thread_slots(5) == 5
    anyio.to_thread.current_default_thread_limiter().total_tokens = 200
    assert thread_slots(100) == 100
