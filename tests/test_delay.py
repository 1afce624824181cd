"""Delayed tasks: the journal's one timer for every delayed task, and PostgreSQL's claimer.

What every storage does with ``delay`` and ``run_at`` is tested in
tests/storage/test_shared.py; this file tests the journal pool's timer.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import anyio
import pytest

import harnpool
from harnpool import Job


async def noop() -> int:
    return 1


def sync_noop() -> int:
    return 2


async def test_a_thousand_delayed_tasks_add_no_sleeping_task_each(journal_path: Path) -> None:
    with anyio.fail_after(20):
        async with harnpool.open_pool(journal_path) as pool:
            before = len(anyio.get_running_tasks())
            ids = await pool.submit_many(Job(noop, delay=3600 + n) for n in range(1000))
            assert len(anyio.get_running_tasks()) <= before + 2
            for task_id in ids:
                assert await pool.cancel(task_id)


async def test_an_earlier_due_task_wakes_the_timer(journal_path: Path) -> None:
    with anyio.fail_after(10):
        async with harnpool.open_pool(journal_path, max_concurrent=2) as pool:
            late = await pool.submit(noop, delay=3600)
            soon = await pool.submit(noop, delay=0.05)
            assert await pool.wait(soon) == 1
            assert pool.info(late).status is harnpool.Status.QUEUED
            assert await pool.cancel(late)


async def test_cancelled_delayed_tasks_do_not_stay_in_the_timer(journal_path: Path) -> None:
    async with harnpool.open_pool(journal_path) as pool:
        ids = await pool.submit_many(Job(noop, delay=3600) for _ in range(100))
        for task_id in ids:
            await pool.cancel(task_id)
        # Rebuilt once most entries were cancelled: what is left is bounded, not 100.
        assert len(pool._tasks.due) <= 50


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_blocking_pool_submits_with_a_delay(journal_path: Path, backend: str) -> None:
    with harnpool.open_blocking_pool(journal_path, backend=backend) as pool:  # type: ignore[arg-type]
        task_id = pool.submit(sync_noop, delay=0.05)
        assert pool.info(task_id).not_before is not None
        assert pool.wait(task_id, timeout=10) == 2
        with pytest.raises(ValueError, match="delay"):
            pool.submit(sync_noop, delay=-1)
        ids = pool.submit_many([Job(sync_noop, delay=0.01)])
        assert pool.wait(ids[0], timeout=10) == 2


async def stamp() -> float:
    return time.time()


async def test_a_task_due_between_a_claim_and_the_due_lookup_is_claimed_at_once(
    postgres_url: str, pool_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("psycopg")
    from harnpool import _shared
    from harnpool._pg import PostgresStore

    # Nothing but the claimer's own decision may start the task: no poll in the test's time.
    monkeypatch.setattr(_shared, "POLL", 60.0)
    due = time.time() + 0.5
    lookup = PostgresStore.seconds_until_due

    def late_lookup(self: PostgresStore) -> float | None:
        # The claim before found nothing due; the task becomes due before this answers.
        time.sleep(max(0.0, due + 0.01 - time.time()))
        return lookup(self)

    run_at = datetime.datetime.fromtimestamp(due, datetime.UTC)
    async with harnpool.open_pool(postgres_url, name=pool_name, workers=0) as client:
        task_id = await client.submit(stamp, run_at=run_at)
    monkeypatch.setattr(PostgresStore, "seconds_until_due", late_lookup)
    with anyio.fail_after(20):
        async with harnpool.open_pool(postgres_url, name=pool_name) as pool:
            assert await pool.wait(task_id) >= due - 1e-5
