"""The ready queue: each strategy's order; waiting workers are woken, never lost."""

from __future__ import annotations

import anyio
import pytest

from harnpool._queue import ReadyQueue, Strategy


class Item:
    def __init__(
        self, name: str, priority: int = 0, seq: int = 0, group: str | None = None, at: float = 0
    ) -> None:
        self.name = name
        self.priority = priority
        self.seq = seq
        self.group = group
        self.submitted_at = at

    def __repr__(self) -> str:
        return self.name


async def drain(queue: ReadyQueue[Item]) -> list[str]:
    return [(await queue.get()).name for _ in range(len(queue))]


PLAN = [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1), ("f", 9)]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("priority", ["f", "b", "d", "a", "c", "e"]),
        ("fifo", ["a", "b", "c", "d", "e", "f"]),
        ("lifo", ["f", "e", "d", "c", "b", "a"]),
    ],
)
async def test_strategy_order(strategy: Strategy, expected: list[str]) -> None:
    queue: ReadyQueue[Item] = ReadyQueue(strategy)
    for seq, (name, priority) in enumerate(PLAN, 1):
        queue.put(Item(name, priority, seq))
    assert await drain(queue) == expected
    assert len(queue) == 0


async def test_fair_takes_turns_between_groups() -> None:
    queue: ReadyQueue[Item] = ReadyQueue("fair")
    seq = 0
    for n in range(5):  # a busy tenant submits a burst first
        seq += 1
        queue.put(Item(f"busy{n}", 0, seq, "busy"))
    for name in ("quiet0", "quiet1"):
        seq += 1
        queue.put(Item(name, 0, seq, "quiet"))
    seq += 1
    queue.put(Item("other0", 0, seq, None))
    assert await drain(queue) == [
        "busy0",
        "quiet0",
        "other0",
        "busy1",
        "quiet1",
        "busy2",
        "busy3",
        "busy4",
    ]


async def test_fair_orders_within_a_group_by_priority() -> None:
    queue: ReadyQueue[Item] = ReadyQueue("fair")
    queue.put(Item("low", 0, 1, "g"))
    queue.put(Item("high", 7, 2, "g"))
    assert await drain(queue) == ["high", "low"]


async def test_aging_lets_an_old_low_priority_task_overtake() -> None:
    queue: ReadyQueue[Item] = ReadyQueue("priority", aging=10.0)
    queue.put(Item("old-low", 0, 1, at=1000.0))  # waited 100 s longer: worth 10 points
    queue.put(Item("new-high", 5, 2, at=1100.0))
    queue.put(Item("newer-top", 20, 3, at=1100.0))
    assert await drain(queue) == ["newer-top", "old-low", "new-high"]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="strategy"):
        ReadyQueue("random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aging"):
        ReadyQueue("priority", aging=0)


async def test_get_waits_for_put() -> None:
    queue: ReadyQueue[Item] = ReadyQueue()
    got: list[Item] = []

    async def consume() -> None:
        got.append(await queue.get())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            queue.put(Item("x", seq=1))
    assert [i.name for i in got] == ["x"]


async def _woken_then_cancelled() -> list[str]:
    queue: ReadyQueue[Item] = ReadyQueue()
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
            queue.put(Item("item", seq=1))
    return got


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_woken_waiter_that_is_cancelled_loses_no_item(backend: str) -> None:
    got = anyio.run(_woken_then_cancelled, backend=backend)
    assert got == ["second"]


@pytest.mark.parametrize("workers", [1, 3])
async def test_each_item_goes_to_exactly_one_worker(workers: int) -> None:
    queue: ReadyQueue[Item] = ReadyQueue()
    got: list[int] = []

    async def work() -> None:
        while True:
            got.append((await queue.get()).seq)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(work)
            for seq in range(100):
                queue.put(Item(str(seq), seq % 3, seq))
                if seq % 7 == 0:
                    await anyio.wait_all_tasks_blocked()
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert sorted(got) == list(range(100))
