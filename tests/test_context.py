"""What only a journal pool (and the blocking pool over it) does with contexts and results.

The storage suite (tests/storage/test_context_and_results.py) covers what every
storage shares; here: tasks a reopen restores, tasks attached again by key, a
task waiting on itself through as_completed, and BlockingPool's calls from
plain threads on both event loops.
"""

from __future__ import annotations

import contextvars
import gc
import threading
import weakref
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest

import harnpool
from harnpool import Job

Backend = Literal["asyncio", "trio"]

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")
payload_var: contextvars.ContextVar[object] = contextvars.ContextVar("payload_var")
#: The pool a test's task functions use, under the test's name for it.
_pools: dict[str, harnpool.Pool] = {}
#: Set by a task function once it runs.
_running: dict[str, anyio.Event] = {}


async def block() -> None:
    _running["block"].set()
    await anyio.sleep_forever()


@harnpool.task(name="tests.test_context.held_then_read")
async def held_then_read() -> list[Any]:
    """Held forever on its first attempt; reports what it sees on a later one."""
    current = harnpool.current_task()
    if current.attempt == 1:
        await block()
    return [request_id.get(), current.attempt]


async def read() -> str:
    return request_id.get()


async def wait_on_self_and(other: str) -> None:
    async for _ in _pools["waiter"].as_completed([other, harnpool.current_task().id]):
        pass


async def spawn_child() -> list[str]:
    pool = _pools["spawner"]
    request_id.set("set by parent")
    child = await pool.submit(child_reads)
    return [harnpool.current_task().id, child, await pool.wait(child)]


async def child_reads() -> str:
    return f"{harnpool.current_task().id} {request_id.get()}"


class TestRestoredTasks:
    async def test_a_task_a_reopen_resumes_runs_in_a_clean_context(
        self, journal_path: Path
    ) -> None:
        class Stop(Exception):
            pass

        request_id.set("first submitter")
        with pytest.raises(Stop):
            async with harnpool.open_pool(journal_path) as pool:
                _running["block"] = anyio.Event()
                task_id = await pool.submit(held_then_read)
                with anyio.fail_after(10):
                    await _running["block"].wait()
                raise Stop  # the running task stays running in the journal
        request_id.set("opener")
        async with harnpool.open_pool(journal_path) as pool:
            assert pool.recovery.resumed == (task_id,)
            with anyio.fail_after(10):
                assert await pool.wait(task_id) == ["unset", 2]

    async def test_a_task_attached_again_by_key_runs_in_its_new_submitters_context(
        self, journal_path: Path
    ) -> None:
        class Stop(Exception):
            pass

        with pytest.raises(Stop):
            async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
                _running["block"] = anyio.Event()
                blocker = await pool.submit(block)
                request_id.set("first submitter")
                task_id = await pool.submit(read, key="k")
                with anyio.fail_after(10):
                    await _running["block"].wait()
                raise Stop
        async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
            await pool.cancel(blocker)
            request_id.set("second submitter")
            assert await pool.submit(read, key="k") == task_id
            with anyio.fail_after(10):
                assert await pool.wait(task_id) == "second submitter"


class Payload:
    """A value a submitter's context holds."""


async def noop() -> None:
    pass


class TestLifetime:
    async def test_a_finished_task_keeps_no_submitter_value_alive(self, journal_path: Path) -> None:
        refs: list[weakref.ref[Payload]] = []

        async def submitter(pool: harnpool.Pool) -> None:
            # An anyio task of its own: its context dies with it.
            payload = Payload()
            refs.append(weakref.ref(payload))
            payload_var.set(payload)
            await pool.wait(await pool.submit(noop))

        async with harnpool.open_pool(journal_path) as pool:
            async with anyio.create_task_group() as tg:
                tg.start_soon(submitter, pool)
            gc.collect()
            assert refs[0]() is None
            assert pool.info("t1").status is harnpool.Status.COMPLETED


_release = threading.Event()


def stuck_then_read() -> list[Any]:
    """A plain function: its first attempt outlives its timeout, in its thread."""
    attempt = harnpool.current_task().attempt
    request_id.set(f"attempt {attempt}")
    if attempt == 1:
        _release.wait(10)
    return [attempt, request_id.get()]


class TestThreads:
    async def test_a_retry_runs_beside_its_abandoned_thread_in_a_context_of_its_own(
        self, journal_path: Path
    ) -> None:
        _release.clear()
        try:
            async with harnpool.open_pool(
                journal_path, max_concurrent=2, retries=1, retry_backoff=0.01
            ) as pool:
                request_id.set("submitter")
                task_id = await pool.submit(stuck_then_read, timeout=0.2)
                with anyio.fail_after(10):
                    assert await pool.wait(task_id) == [2, "attempt 2"]
                _release.set()
        finally:
            _release.set()


class TestNested:
    async def test_a_child_task_sees_its_parents_variables_but_is_its_own_task(
        self, journal_path: Path
    ) -> None:
        async with harnpool.open_pool(journal_path, max_concurrent=2) as pool:
            _pools["spawner"] = pool
            try:
                parent = await pool.submit(spawn_child)
                with anyio.fail_after(10):
                    parent_id, child, seen = await pool.wait(parent)
            finally:
                del _pools["spawner"]
            assert parent_id == parent
            assert seen == f"{child} set by parent"
            assert request_id.get() == "unset"

    async def test_as_completed_on_the_task_itself_raises_wait_deadlock(
        self, journal_path: Path
    ) -> None:
        async with harnpool.open_pool(journal_path, max_concurrent=2) as pool:
            other = await pool.submit(read)
            _pools["waiter"] = pool
            try:
                waiter = await pool.submit(wait_on_self_and, other)
                with anyio.fail_after(10), pytest.raises(harnpool.TaskFailed) as caught:
                    await pool.wait(waiter)
            finally:
                del _pools["waiter"]
            assert caught.value.error_type == "harnpool.WaitDeadlock"
            assert pool._waits._waits == {}
            assert pool._tasks.watchers == {}


def _read_in_thread() -> str:
    return request_id.get()


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> Backend:
    value: Backend = request.param
    return value


class TestBlockingPool:
    def test_tasks_run_in_a_copy_of_the_calling_threads_context(
        self, backend: Backend, journal_path: Path
    ) -> None:
        with harnpool.open_blocking_pool(journal_path, backend=backend, max_concurrent=2) as pool:
            seen: dict[str, list[str]] = {}

            def caller(name: str) -> None:
                request_id.set(name)
                ids: list[str] = [pool.submit(read), pool.submit(_read_in_thread)]
                ids += pool.submit_many([Job(read)])
                request_id.set("changed")
                seen[name] = pool.results(ids)

            threads = [threading.Thread(target=caller, args=(n,)) for n in ("a", "b")]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            assert seen == {"a": ["a", "a", "a"], "b": ["b", "b", "b"]}

    def test_as_completed_and_results_from_a_thread(
        self, backend: Backend, journal_path: Path
    ) -> None:
        with harnpool.open_blocking_pool(journal_path, backend=backend, max_concurrent=2) as pool:
            ids = pool.submit_many(Job(read) for _ in range(3))
            assert sorted(pool.as_completed(iter(ids), timeout=10)) == sorted(ids)
            assert pool.results(iter(ids), timeout=10) == ["unset"] * 3
            with pytest.raises(TypeError, match="ids"):
                pool.as_completed("t1")
            with pytest.raises(TypeError, match="ids"):
                pool.results("t1")
            with pytest.raises(harnpool.UnknownTaskError):
                pool.results(["t999"])

    def test_breaking_out_of_as_completed_leaves_no_registration(
        self, backend: Backend, journal_path: Path
    ) -> None:
        with harnpool.open_blocking_pool(journal_path, backend=backend, max_concurrent=2) as pool:
            fast = pool.submit(read)
            slow = pool.submit(anyio.sleep_forever)
            for task_id in pool.as_completed([fast, slow], timeout=10):
                assert task_id == fast
                break
            assert pool._call("statistics", lambda: pool._pool._tasks.watchers) == {}
            iterator = pool.as_completed([slow])
            with pytest.raises(harnpool.WaitTimeout):
                pool.results([slow], timeout=0.05)
            iterator.close()
            assert pool._call("statistics", lambda: pool._pool._tasks.watchers) == {}
            pool.cancel(slow)
