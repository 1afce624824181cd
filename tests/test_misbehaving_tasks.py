"""Tasks that misbehave: they raise cancellation or BaseExceptions of their own, fight
cancel(), or flood a bounded queue. The pool must fail or cancel the task, keep its
workers, and still let its own cancellation through."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import anyio
import pytest

import harnpool
from harnpool import Status, _journal
from harnpool._queue import ReadyQueue


class Boom(BaseException):
    """A BaseException that is neither an interrupt nor a cancellation."""


class Leave(Exception):
    """Leaves a pool block by an exception: the pool stops without draining."""


def cancelled_type_name() -> str:
    cls = anyio.get_cancelled_exc_class()
    return f"{cls.__module__}.{cls.__qualname__}"


async def raise_own_cancellation() -> None:
    """Raise the backend's cancellation exception with no scope around us cancelled."""
    caught: BaseException | None = None
    with anyio.CancelScope() as inner:
        inner.cancel()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class() as exc:
            caught = exc
    assert caught is not None
    raise caught


async def answer() -> int:
    return 42


class TestOwnCancellation:
    async def test_it_fails_the_task_and_the_worker_goes_on(self, journal_path: Path) -> None:
        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, max_concurrent=1, retries=2) as pool:
                rogue = await pool.submit(raise_own_cancellation)
                after = await pool.submit(answer)
                with pytest.raises(harnpool.TaskFailed) as info:
                    await pool.wait(rogue)
                assert info.value.error_type == cancelled_type_name()
                assert isinstance(info.value.__cause__, anyio.get_cancelled_exc_class())
                assert await pool.wait(after) == 42
                # Like any BaseException, it is not retried unless retry_on names it.
                assert pool.info(rogue).attempts == 1
                assert pool.statistics().running == 0

    @pytest.mark.asyncio_only
    async def test_awaiting_a_future_someone_else_cancelled_fails_the_task(
        self, journal_path: Path
    ) -> None:
        async def awaits_cancelled_future() -> None:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.cancel()
            await future

        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
                rogue = await pool.submit(awaits_cancelled_future)
                after = await pool.submit(answer)
                with pytest.raises(harnpool.TaskFailed) as info:
                    await pool.wait(rogue)
                assert info.value.error_type == "asyncio.exceptions.CancelledError"
                assert await pool.wait(after) == 42

    async def test_the_pools_own_cancellation_still_stops_the_worker(
        self, journal_path: Path
    ) -> None:
        # The function re-raises the cancellation as a fresh exception of the
        # cancelled type: the pool is stopping, so it must stop the worker.
        started = anyio.Event()

        async def stubborn() -> None:
            started.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class() as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise asyncio.CancelledError() from None
                raise

        with anyio.fail_after(10):
            with pytest.raises(Leave):
                async with harnpool.open_pool(journal_path) as pool:
                    task_id = await pool.submit(stubborn)
                    await started.wait()
                    raise Leave
            async with harnpool.open_pool(journal_path) as pool:
                assert task_id in pool.recovery.requeued  # left running, not failed

    async def test_a_host_cancelling_the_pool_still_stops_the_worker(
        self, journal_path: Path
    ) -> None:
        started = anyio.Event()

        async def reraises() -> None:
            started.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class() as exc:
                raise exc from None

        with anyio.fail_after(10):
            with anyio.CancelScope() as host:
                async with harnpool.open_pool(journal_path) as pool:
                    task_id = await pool.submit(reraises)
                    await started.wait()
                    host.cancel()
                    await anyio.sleep_forever()
            assert host.cancelled_caught
            async with harnpool.open_pool(journal_path) as pool:
                assert task_id in pool.recovery.requeued


class TestBaseExceptions:
    @pytest.mark.parametrize("kind", ["async", "thread"])
    async def test_one_fails_only_its_task(self, journal_path: Path, kind: str) -> None:
        gate = anyio.Event()
        started = anyio.Event()

        async def slow() -> str:
            started.set()
            await gate.wait()
            return "slow done"

        async def boom_async() -> None:
            raise Boom("async")

        def boom_thread() -> None:
            raise Boom("thread")

        boom = boom_async if kind == "async" else boom_thread
        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, max_concurrent=2, retries=3) as pool:
                other = await pool.submit(slow)
                await started.wait()
                failing = await pool.submit(boom)
                with pytest.raises(harnpool.TaskFailed) as info:
                    await pool.wait(failing)
                assert info.value.error_type == f"{__name__}.Boom"
                assert info.value.error_message == kind
                assert pool.info(failing).attempts == 1  # not an Exception: not retried
                assert pool.info(other).status is Status.RUNNING
                assert await pool.wait(await pool.submit(answer)) == 42  # its worker lives
                gate.set()
                assert await pool.wait(other) == "slow done"

    async def test_retry_on_can_name_one(self, journal_path: Path) -> None:
        async def boom() -> None:
            raise Boom("again")

        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, retry_backoff=0.001) as pool:
                task_id = await pool.submit(boom, retries=2, retry_on=[Boom])
                with pytest.raises(harnpool.TaskFailed):
                    await pool.wait(task_id)
                assert pool.info(task_id).attempts == 3

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    @pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
    def test_an_interrupt_or_exit_stops_the_pool_and_the_task_runs_again(
        self, journal_path: Path, backend: str, stop: type[BaseException]
    ) -> None:
        async def stops() -> None:
            raise stop()

        async def run() -> None:
            with anyio.fail_after(10):
                async with harnpool.open_pool(journal_path) as pool:
                    task_id = await pool.submit(stops, key="stops")
                    await pool.wait(task_id)

        with pytest.raises((stop, BaseExceptionGroup)) as info:
            anyio.run(run, backend=backend)
        raised = info.value
        if isinstance(raised, BaseExceptionGroup):
            assert raised.subgroup(stop) is not None
        else:
            assert isinstance(raised, stop)

        async def reopen() -> tuple[Status, int]:
            async with harnpool.open_pool(journal_path) as pool:
                info = pool.info(pool.tasks()[0].id)
                return info.status, pool.statistics().failed

        # Unfinished, like a crash: it runs again once its function is known.
        assert anyio.run(reopen, backend=backend) == (Status.QUEUED, 0)


class TestCancelIsFinal:
    async def test_an_exception_the_function_turns_it_into_is_not_retried(
        self, journal_path: Path
    ) -> None:
        started = anyio.Event()
        attempts = 0

        async def converts() -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                return  # a retry would complete: cancel() would return False
            started.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                raise ValueError("interrupted") from None

        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, retries=3, retry_backoff=0.001) as pool:
                task_id = await pool.submit(converts)
                await started.wait()
                assert await pool.cancel(task_id) is True
                with pytest.raises(harnpool.TaskCancelled):
                    await pool.wait(task_id)
                assert (attempts, pool.info(task_id).attempts) == (1, 1)
                assert pool.info(task_id).reason == "cancelled"

    async def test_an_exception_raised_as_cancel_is_asked_is_not_retried(
        self, journal_path: Path
    ) -> None:
        # The function is already woken to raise when cancel() asks: whichever of
        # the two reaches it, the task ends cancelled.
        gate = anyio.Event()
        started = anyio.Event()

        async def raises_when_released() -> None:
            started.set()
            await gate.wait()
            raise ValueError("released")

        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path, retries=3, retry_backoff=0.001) as pool:
                task_id = await pool.submit(raises_when_released)
                await started.wait()
                await anyio.wait_all_tasks_blocked()
                gate.set()
                assert await pool.cancel(task_id) is True
                assert pool.info(task_id).status is Status.CANCELLED
                assert pool.info(task_id).attempts == 1

    async def test_a_function_that_returns_anyway_completes(self, journal_path: Path) -> None:
        started = anyio.Event()
        release = anyio.Event()
        outcome: list[bool] = []

        async def shielded() -> int:
            started.set()
            with anyio.CancelScope(shield=True):
                await release.wait()
            return 7

        async with harnpool.open_pool(journal_path) as pool:
            task_id = await pool.submit(shielded)
            with anyio.fail_after(10):
                await started.wait()
                async with anyio.create_task_group() as tg:

                    async def cancel() -> None:
                        outcome.append(await pool.cancel(task_id))

                    tg.start_soon(cancel)
                    await anyio.wait_all_tasks_blocked()
                    release.set()
            assert outcome == [False]
            assert await pool.wait(task_id) == 7


class TestCancelWhileTheBlockExits:
    async def test_while_draining_it_works_as_inside(self, journal_path: Path) -> None:
        started = anyio.Event()
        leaving = anyio.Event()
        outcome: list[bool] = []

        async def forever() -> None:
            started.set()
            await anyio.sleep_forever()

        with anyio.fail_after(10):
            async with (
                anyio.create_task_group() as tg,
                harnpool.open_pool(journal_path) as pool,
            ):
                task_id = await pool.submit(forever)
                await started.wait()

                async def cancel_from_outside() -> None:
                    await leaving.wait()
                    outcome.append(await pool.cancel(task_id))

                tg.start_soon(cancel_from_outside)
                leaving.set()
        # The drain returned only once the task finished: cancelled from outside.
        assert outcome == [True]

    async def test_while_stopping_it_raises_pool_closed(self, journal_path: Path) -> None:
        # Two running tasks and one queued; the block is left by an exception.
        # "gone" leaves its attempt at once; "lingers" holds its worker (so the
        # pool cannot finish stopping) until cancel() has been tried on all three.
        gone_out = anyio.Event()
        lingering = anyio.Event()
        tried = anyio.Event()
        started: list[str] = []
        errors: dict[str, BaseException] = {}

        async def gone() -> None:
            started.append("gone")
            try:
                await anyio.sleep_forever()
            finally:
                gone_out.set()

        async def lingers() -> None:
            started.append("lingers")
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True), anyio.fail_after(5):
                    lingering.set()
                    await tried.wait()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                with pytest.raises(Leave):
                    async with harnpool.open_pool(journal_path, max_concurrent=2) as pool:
                        ids = {
                            "gone": await pool.submit(gone),
                            "lingers": await pool.submit(lingers),
                            "queued": await pool.submit(answer),
                        }
                        while len(started) < 2:
                            await anyio.wait_all_tasks_blocked()

                        async def cancel_all() -> None:
                            await gone_out.wait()
                            await lingering.wait()
                            for name, task_id in ids.items():
                                try:
                                    await pool.cancel(task_id)
                                except BaseException as exc:
                                    errors[name] = exc
                            tried.set()

                        tg.start_soon(cancel_all)
                        raise Leave
        assert set(errors) == set(ids)
        for exc in errors.values():
            assert isinstance(exc, harnpool.PoolClosedError)
            assert "is stopping" in str(exc)
        async with harnpool.open_pool(journal_path) as pool:  # left for the next open
            assert set(pool.recovery.requeued) == {ids["gone"], ids["lingers"]}
            assert pool.info(ids["queued"]).status is Status.QUEUED


class TestDropOldestUnderOverload:
    async def test_workers_stay_busy_while_submitters_overflow_the_queue(
        self, journal_path: Path
    ) -> None:
        submitters, per_submitter, workers, bound = 64, 8, 2, 4
        submitting = True
        ran_while_submitting = 0
        ids: list[str] = []

        async def work() -> None:
            nonlocal ran_while_submitting
            if submitting:
                ran_while_submitting += 1

        with anyio.fail_after(60):
            async with harnpool.open_pool(
                journal_path, max_concurrent=workers, max_queued=bound, on_full="drop_oldest"
            ) as pool:

                async def submit_all() -> None:
                    for _ in range(per_submitter):
                        ids.append(await pool.submit(work))

                async with anyio.create_task_group() as tg:
                    for _ in range(submitters):
                        tg.start_soon(submit_all)
                submitting = False
            assert len(ids) == submitters * per_submitter
            outcomes = {pool.info(task_id).status for task_id in ids}
            stats = pool.statistics()
        assert outcomes <= {Status.COMPLETED, Status.REJECTED}
        assert stats.completed + stats.rejected == len(ids)
        # Without the workers' share, every task they were woken for was dropped
        # before they could start it, and only the last survivors ran.
        assert ran_while_submitting >= workers
        assert stats.completed > bound

    async def test_tasks_not_yet_durable_are_not_dropped_for_their_successors(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A slow disk: every submitter adds its task while the first flush is still
        # under way. Dropping the oldest of those not yet durable (so not yet in
        # the ready queue, where an idle worker would take it) dropped every task
        # but the last few survivors.
        sync = _journal._sync_data

        def slow_sync(fd: int) -> None:
            time.sleep(0.05)
            sync(fd)

        monkeypatch.setattr(_journal, "_sync_data", slow_sync)
        submitters, workers, bound = 32, 2, 4
        started = 0

        async def work() -> None:
            nonlocal started
            started += 1

        with anyio.fail_after(60):
            async with (
                harnpool.open_pool(
                    journal_path, max_concurrent=workers, max_queued=bound, on_full="drop_oldest"
                ) as pool,
                anyio.create_task_group() as tg,
            ):
                for _ in range(submitters):
                    tg.start_soon(pool.submit, work)
            stats = pool.statistics()
        assert stats.completed + stats.rejected == submitters
        assert stats.completed == started
        assert stats.completed > bound


class TestReadyQueueClaims:
    """What drop_oldest consults: getters about to take an item."""

    class Item:
        def __init__(self, seq: int) -> None:
            self.priority = 0
            self.seq = seq
            self.group = None
            self.submitted_at = 0.0

    async def test_a_woken_getter_claims_until_it_takes_its_item(self) -> None:
        queue: ReadyQueue[TestReadyQueueClaims.Item] = ReadyQueue()
        taken: list[int] = []

        async def get() -> None:
            taken.append((await queue.get()).seq)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(get)
                await anyio.wait_all_tasks_blocked()
                assert queue.claimed == 0
                queue.put(self.Item(1))
                assert queue.claimed == 1
                await anyio.wait_all_tasks_blocked()
            assert (taken, queue.claimed) == ([1], 0)

    async def test_a_cancelled_woken_getter_passes_its_claim_on(self) -> None:
        queue: ReadyQueue[TestReadyQueueClaims.Item] = ReadyQueue()
        scopes: list[anyio.CancelScope] = []
        taken: list[int] = []

        async def get() -> None:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                taken.append((await queue.get()).seq)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(get)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(get)
                await anyio.wait_all_tasks_blocked()
                queue.put(self.Item(1))  # wakes the first getter
                scopes[0].cancel()
                assert queue.claimed == 1
                await anyio.wait_all_tasks_blocked()
                # Either the cancellation won and the second getter took the item,
                # or the first took it before the cancellation reached it.
                assert (taken, queue.claimed) == ([1], 0)
                scopes[1].cancel()  # a getter still waiting in the first case
        assert queue.claimed == 0
