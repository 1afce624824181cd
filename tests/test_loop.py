"""The event loop's primitives the pool picks when it opens."""

from __future__ import annotations

import anyio

from harnpool._loop import primitives


class TestSignal:
    async def test_a_cancelled_waiter_leaves_the_others_waiting(self) -> None:
        signal = primitives().event()
        woken: list[str] = []

        async def waiter(name: str) -> None:
            await signal.wait()
            woken.append(name)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as scope:
                    tg.start_soon(waiter, "kept")
                    async with anyio.create_task_group() as inner:
                        inner.start_soon(waiter, "cancelled")
                        await anyio.wait_all_tasks_blocked()
                        inner.cancel_scope.cancel()
                assert not scope.cancel_called
                assert not signal.is_set()
                signal.set()
        assert woken == ["kept"]
        assert signal.is_set()
        await signal.wait()  # set: returns at once

    async def test_every_waiter_is_woken_by_one_set(self) -> None:
        signal = primitives().event()
        woken: list[int] = []

        async def waiter(n: int) -> None:
            await signal.wait()
            woken.append(n)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for n in range(5):
                    tg.start_soon(waiter, n)
                await anyio.wait_all_tasks_blocked()
                signal.set()
        assert sorted(woken) == list(range(5))
