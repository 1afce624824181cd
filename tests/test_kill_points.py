"""SIGKILL a real child process at chosen points, reopen its journal, and check nothing is lost.

The child (``_kill_point_child.py``) keeps a ledger outside the journal of what it was told:
every acknowledged submit and every result ``wait`` returned. After the kill the journal must
hold every acknowledged task with its id, every task whose result was returned must be
completed with that result and never run again, and interrupted tasks must be queued again.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import harnpool
from harnpool import Status

CHILD = Path(__file__).with_name("_kill_point_child.py")
COUNT = 12


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        text = self.path.read_text()
        # a line being written at the kill has no newline yet: ignore it
        complete = text[: text.rfind("\n") + 1]
        return [line.split() for line in complete.splitlines()]

    def acked(self) -> dict[str, str]:
        return {words[1]: words[2] for words in self.lines() if words[0] == "acked"}

    def results(self) -> dict[str, int]:
        return {words[1]: int(words[2]) for words in self.lines() if words[0] == "result"}

    def starts(self) -> collections.Counter[str]:
        return collections.Counter(words[1] for words in self.lines() if words[0] == "start")


def kill_when(
    ready: Callable[[Ledger], bool], ledger: Ledger, script: Path, *args: str | int | Path
) -> None:
    """Run the child ``script`` with ``args`` until ``ready(ledger)``, then SIGKILL it."""
    child = subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    try:
        while not ready(ledger):
            if child.poll() is not None:
                assert child.stderr is not None
                pytest.fail(f"the child exited early: {child.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the child never reached the kill point; ledger: {ledger.lines()}")
            time.sleep(0.005)  # polling the ledger, not waiting for an outcome
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.stderr is not None
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL


def run_and_kill(journal: Path, ledger: Ledger, mode: str, ready: Callable[[Ledger], bool]) -> None:
    kill_when(ready, ledger, CHILD, journal, ledger.path, mode, COUNT)


def square(key: str, n: int, hang: bool) -> dict[str, int | str]:
    return {"key": key, "square": n * n}


async def check_and_resume(journal: Path, ledger: Ledger) -> dict[str, Status]:
    """Reopen: check the ledger's promises, then re-attach every key and finish the work."""
    acked, results = ledger.acked(), ledger.results()
    starts_at_crash = ledger.starts()
    async with harnpool.open_pool(journal, max_concurrent=3) as pool:
        infos = {info.key: info for info in pool.tasks()}
        statuses = {key: info.status for key, info in infos.items() if key is not None}
        for key, task_id in acked.items():  # nothing acknowledged is lost
            assert infos[key].id == task_id
        for key in results:  # nothing whose result was returned is unfinished
            assert statuses[key] is Status.COMPLETED
        assert Status.RUNNING not in statuses.values()
        # a task is requeued only if it had started (its "running" record may not have
        # been flushed before the kill, so not every started task is requeued)
        requeued = {pool.info(task_id).key for task_id in pool.recovery.requeued}
        assert requeued <= {k for k in starts_at_crash if statuses[k] is Status.QUEUED}
        # resume: re-attach a function that does not hang
        reran: list[str] = []

        async def again(key: str, n: int, hang: bool) -> dict[str, int | str]:
            reran.append(key)
            return square(key, n, False)

        for n in range(COUNT):
            key = f"k{n}"
            task_id = await pool.submit(again, key, n, False, key=key, priority=n % 3)
            if key in acked:
                assert task_id == acked[key]
            assert (await pool.wait(task_id))["square"] == n * n
        for key in results:
            assert key not in reran  # a finished task never runs again
        assert set(reran) == {f"k{n}" for n in range(COUNT)} - {
            k for k, s in statuses.items() if s is Status.COMPLETED
        }
    return statuses


async def test_killed_after_every_submit_was_acknowledged(tmp_path: Path) -> None:
    journal, ledger = tmp_path / "pool.jsonl", Ledger(tmp_path / "ledger")
    run_and_kill(
        journal,
        ledger,
        "hang-all",
        lambda led: ["all-acked"] in led.lines() and len(led.starts()) == 3,
    )
    statuses = await check_and_resume(journal, ledger)
    assert len(ledger.acked()) == COUNT
    assert set(statuses.values()) == {Status.QUEUED}


async def test_killed_with_some_finished_and_some_running(tmp_path: Path) -> None:
    journal, ledger = tmp_path / "pool.jsonl", Ledger(tmp_path / "ledger")
    # even-numbered tasks finish; the odd ones hang in the three worker slots
    run_and_kill(
        journal, ledger, "hang-odd", lambda led: len(led.results()) >= 3 and len(led.starts()) >= 6
    )
    statuses = await check_and_resume(journal, ledger)
    assert {key for key, s in statuses.items() if s is Status.COMPLETED} >= set(ledger.results())
    assert len(ledger.results()) >= 3


async def test_killed_while_submitting(tmp_path: Path) -> None:
    journal, ledger = tmp_path / "pool.jsonl", Ledger(tmp_path / "ledger")
    run_and_kill(journal, ledger, "flow", lambda led: len(led.acked()) >= COUNT // 2)
    statuses = await check_and_resume(journal, ledger)
    assert len(statuses) >= len(ledger.acked())


async def test_killed_and_reopened_many_times_in_a_row(tmp_path: Path) -> None:
    journal, ledger = tmp_path / "pool.jsonl", Ledger(tmp_path / "ledger")
    for round_ in range(3):
        run_and_kill(
            journal,
            ledger,
            "hang-odd",
            lambda led, r=round_: led.lines().count(["all-acked"]) == r + 1,  # type: ignore[misc]
        )
    # every run re-submitted the same keys: still one task per key
    async with harnpool.open_pool(journal) as pool:
        keys = [info.key for info in pool.tasks()]
        assert sorted(keys, key=str) == sorted({f"k{n}" for n in range(COUNT)})
    await check_and_resume(journal, ledger)
