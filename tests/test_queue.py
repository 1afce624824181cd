"""The ready queue: priority first, then FIFO; waiting workers are woken, never lost."""

from __future__ import annotations

import anyio
import pytest

from harnpool._queue import ReadyQueue


async def test_higher_priority_first_then_submission_order() -> None:
    queue: ReadyQueue[str] = ReadyQueue()
    items = [("a", 0, 1), ("b", 5, 2), ("c", 0, 3), ("d", 5, 4), ("e", -1, 5), ("f", 9, 6)]
    for name, priority, seq in items:
        queue.put(name, priority=priority, seq=seq)
    got = [await queue.get() for _ in items]
    assert got == ["f", "b", "d", "a", "c", "e"]
    assert len(queue) == 0


async def test_get_waits_for_put() -> None:
    queue: ReadyQueue[int] = ReadyQueue()
    got: list[int] = []

    async def consume() -> None:
        got.append(await queue.get())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            queue.put(7, priority=0, seq=1)
    assert got == [7]


async def _woken_then_cancelled() -> list[str]:
    queue: ReadyQueue[str] = ReadyQueue()
    got: list[str] = []

    async def consume(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await queue.get()
            got.append(name)

    first, second = anyio.CancelScope(), anyio.CancelScope()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, "first", first)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(consume, "second", second)
            await anyio.wait_all_tasks_blocked()
            # The first waiter is cancelled, then woken for the only item before it runs.
            first.cancel()
            queue.put("item", priority=0, seq=1)
    return got


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_woken_waiter_that_is_cancelled_loses_no_item(backend: str) -> None:
    got = anyio.run(_woken_then_cancelled, backend=backend)
    assert got == ["second"]


@pytest.mark.parametrize("workers", [1, 3])
async def test_each_item_goes_to_exactly_one_worker(workers: int) -> None:
    queue: ReadyQueue[int] = ReadyQueue()
    got: list[int] = []

    async def work() -> None:
        while True:
            got.append(await queue.get())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(work)
            for seq in range(100):
                queue.put(seq, priority=seq % 3, seq=seq)
                if seq % 7 == 0:
                    await anyio.wait_all_tasks_blocked()
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert sorted(got) == list(range(100))
