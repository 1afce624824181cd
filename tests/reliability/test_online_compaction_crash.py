"""A journal compacting itself while open, SIGKILLed at each step: nothing acknowledged is lost.

A child (``_online_compact_child.py``) submits tasks without end to a pool whose
journal compacts itself after a few dozen lines, and stops at a chosen point of
the first online compaction for the parent to SIGKILL it: while the new file is
half written, while the compaction's thread copies what was appended meanwhile,
while the writer copies the last of it, and after the rename before the
directory is synced. Reopened, the journal must hold every acknowledged task
under its id, every task whose result was returned completed with that result,
never to run again, and no ``.compact`` file may be left or read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import harnpool
from harnpool import Status
from tests.test_kill_points import Ledger, kill_when

CHILD = Path(__file__).with_name("_online_compact_child.py")
POINTS = ["writing", "catching-up", "switching", "renamed"]


def _killed_at(point: str, journal: Path, ledger: Ledger, keep: int | None) -> None:
    kill_when(
        lambda led: ["point", point] in led.lines(),
        ledger,
        CHILD,
        journal,
        ledger.path,
        point,
        "none" if keep is None else keep,
    )


async def again(key: str, n: int) -> dict[str, object]:
    return {"key": key, "square": n * n}


@pytest.mark.parametrize("point", POINTS)
async def test_killed_during_online_compaction_loses_nothing(tmp_path: Path, point: str) -> None:
    journal, ledger = tmp_path / "pool.jsonl", Ledger(tmp_path / "ledger")
    _killed_at(point, journal, ledger, None)
    acked, results, started = ledger.acked(), ledger.results(), ledger.starts()
    assert len(acked) > 10  # the pool went well past the compaction floor
    reran: list[str] = []

    async def resumed(key: str, n: int) -> dict[str, object]:
        reran.append(key)
        return await again(key, n)

    async with harnpool.open_pool(journal, max_concurrent=3) as pool:
        assert not journal.with_name("pool.jsonl.compact").exists()
        infos = {info.key: info for info in pool.tasks()}
        for key, task_id in acked.items():  # nothing acknowledged is lost
            assert infos[key].id == task_id
        for key, square in results.items():  # every returned result is there
            assert infos[key].status is Status.COMPLETED
            assert (await pool.wait(infos[key].id))["square"] == square
        requeued = {pool.info(task_id).key for task_id in pool.recovery.requeued}
        assert requeued <= set(started)
        for key, task_id in acked.items():
            n = int(key[1:])
            assert await pool.submit(resumed, key, n, key=key) == task_id
            assert (await pool.wait(task_id))["square"] == n * n
        assert not set(results) & set(reran)  # a finished task never runs again


@pytest.mark.parametrize("point", ["writing", "renamed"])
async def test_killed_during_online_compaction_with_keep_finished(
    tmp_path: Path, point: str
) -> None:
    journal, ledger = tmp_path / "pool.jsonl", Ledger(tmp_path / "ledger")
    _killed_at(point, journal, ledger, 5)
    acked, results, started = ledger.acked(), ledger.results(), ledger.starts()
    async with harnpool.open_pool(journal, max_concurrent=3, keep_finished=5) as pool:
        infos = {info.key: info for info in pool.tasks()}
        # only finished tasks may be gone: a task is dropped once it finished
        assert set(acked) - set(infos) <= set(started)
        for key, info in infos.items():
            assert key is not None
            assert info.id == acked.get(key, info.id)
            if key in results:
                assert info.status is Status.COMPLETED
        assert pool.statistics().completed <= 5
        # what never started is still there, queued
        for key in set(acked) - set(started):
            assert infos[key].status is Status.QUEUED
