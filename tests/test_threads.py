"""The thread checks: a Pool only on its event loop's thread, a BlockingPool only off it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import harnpool
from harnpool import HarnpoolError, WrongThreadError
from harnpool._threads import check_loop_thread, check_not_loop_thread

POOL = "/tmp/pool.jsonl"


def in_thread(name: str, fn: Callable[[], None]) -> BaseException | None:
    """Run ``fn`` in a new thread named ``name``; return what it raised."""
    with ThreadPoolExecutor(1, thread_name_prefix=name) as executor:
        return executor.submit(fn).exception()


class TestCheckLoopThread:
    def test_passes_on_the_loop_thread(self) -> None:
        check_loop_thread(threading.get_ident(), pool=POOL, method="Pool.submit")

    def test_refuses_another_thread_naming_the_way_out(self) -> None:
        here = threading.current_thread().name
        loop_thread = threading.get_ident()
        error = in_thread(
            "web-worker", lambda: check_loop_thread(loop_thread, pool=POOL, method="Pool.submit")
        )
        assert isinstance(error, WrongThreadError)
        assert isinstance(error, HarnpoolError)
        assert isinstance(error, RuntimeError)
        assert error.pool == POOL
        assert error.method == "Pool.submit"
        assert error.thread.startswith("web-worker")
        message = str(error)
        for part in ("Pool.submit", POOL, repr(here), error.thread, "open_blocking_pool"):
            assert part in message, part

    def test_names_a_loop_thread_that_has_ended_by_its_ident(self) -> None:
        ended = threading.Thread(target=lambda: None)
        ended.start()
        ended.join()
        assert ended.ident is not None
        with pytest.raises(WrongThreadError, match=f"thread {ended.ident}"):
            check_loop_thread(ended.ident, pool=POOL, method="Pool.wait")


class TestCheckNotLoopThread:
    def test_passes_off_the_loop_thread(self) -> None:
        loop_thread = threading.get_ident()
        error = in_thread(
            "client",
            lambda: check_not_loop_thread(loop_thread, pool=POOL, method="BlockingPool.wait"),
        )
        assert error is None

    def test_refuses_the_loop_thread(self) -> None:
        with pytest.raises(WrongThreadError) as refused:
            check_not_loop_thread(threading.get_ident(), pool=POOL, method="BlockingPool.wait")
        assert refused.value.method == "BlockingPool.wait"
        assert refused.value.pool == POOL
        assert refused.value.thread == threading.current_thread().name
        assert "block the very loop" in str(refused.value)


# Every Pool method refuses a foreign thread before it touches anything, so even
# submit cannot change the pool's memory or hang from there.
@pytest.mark.parametrize(
    "method", ["submit", "submit_many", "wait", "cancel", "info", "tasks", "statistics"]
)
async def test_pool_refuses_a_call_from_a_foreign_thread(method: str, journal_path: Path) -> None:
    async with harnpool.open_pool(journal_path) as pool:
        task_id = await pool.submit(int, "1")
        await pool.wait(task_id)
        calls: dict[str, Callable[[], object]] = {
            "submit": lambda: anyio.run(pool.submit, int, "2", backend="asyncio"),
            "submit_many": lambda: anyio.run(
                pool.submit_many, [harnpool.Job(int, "3")], backend="asyncio"
            ),
            "wait": lambda: anyio.run(pool.wait, task_id, backend="asyncio"),
            "cancel": lambda: anyio.run(pool.cancel, task_id, backend="asyncio"),
            "info": lambda: pool.info(task_id),
            "tasks": pool.tasks,
            "statistics": pool.statistics,
        }
        with pytest.raises(WrongThreadError) as refused:
            await anyio.to_thread.run_sync(calls[method])
        assert refused.value.method == f"Pool.{method}"
        assert [info.id for info in pool.tasks()] == [task_id]  # nothing was added
