"""open_blocking_pool: the pool used from plain threads, on asyncio and on trio.

These tests are sync: their threads are the pool's users. Each runs on both
event loops through the ``backend`` fixture, since the suite's ``--backend``
switch only concerns async tests.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.lowlevel
import msgspec
import pytest

import harnpool
from harnpool import Job, PoolClosedError, Status, WrongThreadError
from tests.test_kill_points import Ledger, kill_when

Backend = Literal["asyncio", "trio"]
CHILD = Path(__file__).with_name("_blocking_child.py")
DEADLINE = 10.0  # seconds any one blocking step may take before the test fails


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """The event loop the blocking pool runs on."""
    value: Backend = request.param
    return value


class Point(msgspec.Struct):
    x: int
    y: int


def square(n: int) -> tuple[int, int]:
    return (n, n * n)


async def point(n: int) -> Point:
    await anyio.lowlevel.checkpoint()
    return Point(n, -n)


def boom(message: str) -> None:
    raise ValueError(message)


def blocked(started: threading.Event, gate: threading.Event) -> str:
    started.set()
    if not gate.wait(DEADLINE):
        raise TimeoutError("the test never opened the gate")
    return "through"


async def hang(started: threading.Event, cancelled: threading.Event) -> None:
    started.set()
    try:
        await anyio.sleep_forever()
    except anyio.get_cancelled_exc_class():
        cancelled.set()
        raise


def thread_name() -> str:
    return threading.current_thread().name


async def loop_thread_name() -> str:
    return threading.current_thread().name


class Boom(Exception):
    pass


class TestThreads:
    def test_threads_submit_and_wait_at_once(self, backend: Backend, journal_path: Path) -> None:
        clients, per_client = 8, 10
        together = threading.Barrier(clients)

        with harnpool.open_blocking_pool(journal_path, backend=backend, max_concurrent=4) as pool:

            def client(c: int) -> list[Any]:
                together.wait(DEADLINE)  # every thread submits and waits at the same time
                ids = [
                    pool.submit(square if n % 2 else point, c * per_client + n)
                    for n in range(per_client)
                ]
                return [pool.wait(task_id, timeout=DEADLINE) for task_id in ids]

            with ThreadPoolExecutor(clients) as executor:
                results = list(executor.map(client, range(clients)))
            statistics = pool.statistics()

        for c, got in enumerate(results):
            numbers = [c * per_client + n for n in range(per_client)]
            expected = [square(m) if m % 2 else point_of(m) for m in numbers]
            assert got == expected
            # typed by the return annotations, as open_pool types them
            assert [type(value) for value in got] == [type(value) for value in expected]
        assert statistics.completed == clients * per_client

    def test_sync_functions_run_in_worker_threads_async_ones_on_the_loop(
        self, backend: Backend, journal_path: Path
    ) -> None:
        with harnpool.open_blocking_pool(journal_path, backend=backend) as pool:
            on_loop = pool.wait(pool.submit(loop_thread_name), timeout=DEADLINE)
            in_worker = pool.wait(pool.submit(thread_name), timeout=DEADLINE)
        assert on_loop == f"harnpool {pool.path}"
        assert in_worker not in (on_loop, threading.current_thread().name)

    def test_a_plain_task_function_may_call_the_blocking_pool(
        self, backend: Backend, journal_path: Path
    ) -> None:
        def spawn(pool: harnpool.BlockingPool, n: int) -> str:
            return pool.submit(square, n)  # from the pool's own worker thread

        with harnpool.open_blocking_pool(journal_path, backend=backend, max_concurrent=2) as pool:
            child = pool.wait(pool.submit(spawn, pool, 7), timeout=DEADLINE)
            assert pool.wait(child, timeout=DEADLINE) == (7, 49)

    def test_a_plain_task_waiting_through_the_blocking_pool_is_checked_for_deadlock(
        self, backend: Backend, journal_path: Path
    ) -> None:
        # The call reaches the loop with the worker thread's context, so the pool
        # knows which running task waits, as when an async task calls Pool.wait.
        def parent(pool: harnpool.BlockingPool) -> int:
            child = pool.submit(square, 2)
            pool.wait(child, timeout=DEADLINE)  # the only slot is parent's
            return 0

        with harnpool.open_blocking_pool(journal_path, backend=backend, max_concurrent=1) as pool:
            task_id = pool.submit(parent, pool)
            with pytest.raises(harnpool.TaskFailed) as failed:
                pool.wait(task_id, timeout=DEADLINE)
        assert isinstance(failed.value.__cause__, harnpool.WaitDeadlock)

    def test_an_async_task_function_calling_the_blocking_pool_fails_instead_of_hanging(
        self, backend: Backend, journal_path: Path
    ) -> None:
        async def statistics(pool: harnpool.BlockingPool) -> None:
            pool.statistics()  # would block the loop that must answer it

        with harnpool.open_blocking_pool(journal_path, backend=backend) as pool:
            task_id = pool.submit(statistics, pool)
            with pytest.raises(harnpool.TaskFailed) as failed:
                pool.wait(task_id, timeout=DEADLINE)
        error = failed.value.__cause__
        assert isinstance(error, WrongThreadError)
        assert error.method == "BlockingPool.statistics"
        assert error.pool == pool.path

    def test_submit_many_reads_the_jobs_in_the_calling_thread(
        self, backend: Backend, journal_path: Path
    ) -> None:
        readers: list[str] = []

        def jobs() -> Any:
            for n in range(3):
                readers.append(threading.current_thread().name)
                yield Job(square, n, key=f"k{n}")

        with harnpool.open_blocking_pool(journal_path, backend=backend) as pool:
            ids = pool.submit_many(jobs())
            assert [pool.wait(i, timeout=DEADLINE) for i in ids] == [square(n) for n in range(3)]
            assert [info.key for info in pool.tasks()] == ["k0", "k1", "k2"]
            assert pool.info(ids[1]).status is Status.COMPLETED
        assert readers == [threading.current_thread().name] * 3


def point_of(n: int) -> Point:
    return Point(n, -n)


class TestErrors:
    def test_a_failed_task_raises_task_failed_with_its_cause(
        self, backend: Backend, journal_path: Path
    ) -> None:
        with harnpool.open_blocking_pool(journal_path, backend=backend) as pool:
            task_id = pool.submit(boom, "no luck")
            with pytest.raises(harnpool.TaskFailed) as failed:
                pool.wait(task_id, timeout=DEADLINE)
        assert failed.value.task_id == task_id
        assert failed.value.error_type == "builtins.ValueError"
        assert isinstance(failed.value.__cause__, ValueError)

    def test_wait_timeout_queue_full_and_cancel_keep_their_types(
        self, backend: Backend, journal_path: Path
    ) -> None:
        started, gate, cancelled = threading.Event(), threading.Event(), threading.Event()
        with harnpool.open_blocking_pool(
            journal_path, backend=backend, max_concurrent=1, max_queued=1, on_full="reject"
        ) as pool:
            running = pool.submit(blocked, started, gate)
            assert started.wait(DEADLINE)
            with pytest.raises(harnpool.WaitTimeout) as timed_out:
                pool.wait(running, timeout=0.01)
            assert isinstance(timed_out.value, TimeoutError)
            assert timed_out.value.task_id == running

            queued = pool.submit(hang, threading.Event(), cancelled)
            with pytest.raises(harnpool.QueueFull):
                pool.submit(square, 1)
            assert pool.cancel(queued) is True
            with pytest.raises(harnpool.TaskCancelled):
                pool.wait(queued, timeout=DEADLINE)

            gate.set()
            assert pool.wait(running, timeout=DEADLINE) == "through"
            assert pool.cancel(running) is False

    def test_argument_checks_raise_their_own_types(
        self, backend: Backend, journal_path: Path
    ) -> None:
        with harnpool.open_blocking_pool(journal_path, backend=backend) as pool:
            coroutine = point(1)
            with pytest.raises(TypeError, match="not a coroutine object"):
                pool.submit(coroutine)  # type: ignore[call-overload]
            with pytest.raises(TypeError, match="key"):
                pool.submit(square, 1, key=1)  # type: ignore[call-overload]
            with pytest.raises(ValueError, match="timeout"):
                pool.wait("t1", timeout=-1)
            with pytest.raises(TypeError, match="jobs"):
                pool.submit_many(Job(square, 1))  # type: ignore[arg-type]
            with pytest.raises(harnpool.UnknownTaskError):
                pool.wait("t404")
            with pytest.raises(harnpool.UnknownTaskError):
                pool.info("t404")
            assert pool.tasks() == []  # nothing was written

    def test_settings_are_checked_as_open_pool_checks_them(
        self, backend: Backend, journal_path: Path
    ) -> None:
        with pytest.raises(ValueError, match="max_concurrent"):
            harnpool.open_blocking_pool(journal_path, backend=backend, max_concurrent=0).__enter__()
        with pytest.raises(TypeError, match="on_full"):
            harnpool.open_blocking_pool(journal_path, backend=backend, on_full=1).__enter__()  # type: ignore[arg-type]
        assert not journal_path.exists()

    @pytest.mark.parametrize(
        ("backend", "error"),
        [(1, TypeError), ("curio", ValueError), ("ASYNCIO", ValueError)],
    )
    def test_backend_must_be_asyncio_or_trio(
        self, backend: object, error: type[Exception], journal_path: Path
    ) -> None:
        threads = threading.active_count()
        with pytest.raises(error, match="backend"):
            harnpool.open_blocking_pool(journal_path, backend=backend).__enter__()  # type: ignore[arg-type]
        assert threading.active_count() == threads  # refused before any loop started
        assert not journal_path.exists()

    def test_a_locked_journal_raises_journal_locked_error(
        self, backend: Backend, journal_path: Path
    ) -> None:
        with harnpool.open_blocking_pool(journal_path, backend=backend):
            with pytest.raises(harnpool.JournalLockedError) as locked:
                harnpool.open_blocking_pool(journal_path, backend=backend).__enter__()
            assert locked.value.pid is not None


class TestLeaving:
    def test_leaving_normally_waits_for_every_task(
        self, backend: Backend, journal_path: Path
    ) -> None:
        ran: list[int] = []

        def record(n: int) -> int:
            ran.append(n)
            return n

        with harnpool.open_blocking_pool(journal_path, backend=backend) as pool:
            pool.submit_many(Job(record, n) for n in range(20))
        assert sorted(ran) == list(range(20))
        with harnpool.open_blocking_pool(journal_path, backend=backend) as pool:
            assert pool.statistics().completed == 20

    def test_leaving_by_an_exception_abandons_running_tasks_and_reraises_it(
        self, backend: Backend, journal_path: Path
    ) -> None:
        started, cancelled = threading.Event(), threading.Event()
        with ThreadPoolExecutor(1) as executor:
            with (
                pytest.raises(Boom) as raised,
                harnpool.open_blocking_pool(journal_path, backend=backend) as pool,
            ):
                task_id = pool.submit(hang, started, cancelled)
                assert started.wait(DEADLINE)
                waiter = executor.submit(pool.wait, task_id)
                raise Boom("left")
            assert type(raised.value) is Boom  # the very exception, in no group
            assert str(raised.value) == "left"
            assert cancelled.is_set()
            # whether it was waiting already or called once the pool had closed
            with pytest.raises(PoolClosedError):
                waiter.result(DEADLINE)
        with harnpool.open_blocking_pool(journal_path, backend=backend) as pool:
            assert pool.recovery.requeued == (task_id,)  # "running" in the journal

    def test_a_call_still_running_on_the_loop_when_the_block_is_left_raises_pool_closed(
        self, backend: Backend, journal_path: Path
    ) -> None:
        # Every Pool method returns once its pool closes; a call that would not
        # is cancelled with the portal, and its caller must not see the portal's
        # own CancelledError.
        started = threading.Event()

        async def parked() -> None:
            started.set()
            await anyio.sleep_forever()

        with ThreadPoolExecutor(1) as executor:
            with (
                pytest.raises(Boom),
                harnpool.open_blocking_pool(journal_path, backend=backend) as pool,
            ):
                call = executor.submit(pool._call, "parked", parked)
                assert started.wait(DEADLINE)
                raise Boom
            with pytest.raises(PoolClosedError, match="closed"):
                call.result(DEADLINE)

    def test_calls_after_the_block_raise_pool_closed(
        self, backend: Backend, journal_path: Path
    ) -> None:
        with harnpool.open_blocking_pool(journal_path, backend=backend) as pool:
            task_id = pool.submit(square, 2)
        assert "closed" in repr(pool)
        calls: list[Callable[[], object]] = [
            lambda: pool.submit(square, 3),
            lambda: pool.submit_many([]),
            lambda: pool.wait(task_id),
            lambda: pool.cancel(task_id),
            lambda: pool.info(task_id),
            pool.tasks,
            pool.statistics,
        ]
        for call in calls:
            with pytest.raises(PoolClosedError, match="closed"):
                call()
        assert pool.recovery.tasks == 0
        assert pool.path == str(journal_path)


class TestCrash:
    COUNT = 12

    def test_reopening_after_sigkill_resumes(self, backend: Backend, tmp_path: Path) -> None:
        journal, ledger = tmp_path / "pool.jsonl", Ledger(tmp_path / "ledger")
        evens = {f"k{n}" for n in range(0, self.COUNT, 2)}
        odds = {f"k{n}" for n in range(1, self.COUNT, 2)}

        def killable(led: Ledger) -> bool:
            # every submit acknowledged, every finishing task's result returned,
            # and every hanging task running
            return (
                ["all-acked"] in led.lines()
                and set(led.results()) == evens
                and set(led.starts()) >= odds
            )

        kill_when(killable, ledger, CHILD, journal, ledger.path, backend, self.COUNT)
        acked, results = ledger.acked(), ledger.results()
        assert set(acked) == evens | odds

        reran: list[str] = []

        def again(key: str, n: int) -> int:
            reran.append(key)
            return n * n

        with harnpool.open_blocking_pool(journal, backend=backend, max_concurrent=4) as pool:
            infos = {info.key: info for info in pool.tasks()}
            for key, task_id in acked.items():  # nothing acknowledged is lost
                assert infos[key].id == task_id
            for key, value in results.items():  # nothing whose result was returned is unfinished
                assert infos[key].status is Status.COMPLETED
                assert pool.wait(acked[key]) == value
            assert {infos[key].status for key in odds} == {Status.QUEUED}
            requeued = {pool.info(task_id).key for task_id in pool.recovery.requeued}
            assert requeued <= odds

            def resume(n: int) -> int:
                key = f"k{n}"
                task_id = pool.submit(again, key, n, key=key)
                assert task_id == acked[key]
                result: int = pool.wait(task_id, timeout=DEADLINE)
                return result

            with ThreadPoolExecutor(4) as executor:
                squares = list(executor.map(resume, range(self.COUNT)))
        assert squares == [n * n for n in range(self.COUNT)]
        assert sorted(reran) == sorted(odds)  # a finished task never runs again


class TestSignatures:
    """The blocking API follows the async one; a new setting or option must reach both."""

    def test_open_blocking_pool_takes_open_pools_settings_and_a_backend(self) -> None:
        blocking = inspect.signature(harnpool.open_blocking_pool).parameters
        async_ = inspect.signature(harnpool.open_pool).parameters
        assert [p for p in blocking if p != "backend"] == list(async_)
        for name, parameter in async_.items():
            assert blocking[name].kind is parameter.kind, name
            assert blocking[name].default == parameter.default, name
        assert blocking["backend"].default == "asyncio"

    @pytest.mark.parametrize(
        "method", ["submit", "submit_many", "wait", "cancel", "info", "tasks", "statistics"]
    )
    def test_each_method_takes_what_pools_takes(self, method: str) -> None:
        blocking = inspect.signature(getattr(harnpool.BlockingPool, method)).parameters
        async_ = inspect.signature(getattr(harnpool.Pool, method)).parameters
        assert list(blocking) == list(async_)
        for name, parameter in async_.items():
            assert blocking[name].kind is parameter.kind, name
            assert blocking[name].default == parameter.default, name
