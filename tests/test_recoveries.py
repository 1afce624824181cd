"""Runs a crash interrupted: counted per task, never taken for failed attempts, and bounded.

The crashes are real: a registered task SIGKILLs its own child process
(``_recovery_child.py``), and the next child reopens the journal.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

import harnpool
from harnpool._journal import load
from harnpool._records import Status

CHILD = Path(__file__).with_name("_recovery_child.py")
BACKENDS = ["asyncio", "trio"]


def run_child(tmp_path: Path, mode: str, backend: str, limit: str) -> dict[str, Any] | None:
    """Run one child to its end: its report, or None if it killed itself."""
    child = subprocess.run(
        [
            sys.executable,
            str(CHILD),
            str(tmp_path / "pool.jsonl"),
            str(tmp_path / "runs"),
            mode,
            backend,
            limit,
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if child.returncode == -signal.SIGKILL:
        return None
    assert child.returncode == 0, child.stderr.decode()
    report: dict[str, Any] = msgspec.json.decode(child.stdout)
    return report


def runs(tmp_path: Path) -> int:
    return len((tmp_path / "runs").read_text().splitlines())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_task_that_kills_its_process_is_failed_after_max_recoveries(
    tmp_path: Path, backend: str
) -> None:
    limit = 2
    assert run_child(tmp_path, "poison", backend, str(limit)) is None
    for reopen in range(1, limit + 1):
        assert run_child(tmp_path, "reopen", backend, str(limit)) is None, reopen
        assert runs(tmp_path) == reopen + 1
    # Interrupted limit + 1 times: failed on open, not run again.
    report = run_child(tmp_path, "reopen", backend, str(limit))
    assert report is not None
    assert runs(tmp_path) == limit + 1
    (task_id,) = report["crash_looped"]
    kind, error_type, message = report["outcomes"][task_id]
    assert (kind, error_type) == ("failed", "harnpool.TaskCrashLoop")
    assert f"interrupted {limit + 1} times" in message
    assert f"max_recoveries={limit}" in message
    assert report["recoveries"][task_id] == limit + 1
    loaded = load(tmp_path / "pool.jsonl")
    assert loaded is not None
    record = loaded.tasks[task_id]
    assert (record.status, record.recoveries) == (Status.FAILED, limit + 1)
    # Reopening again finds it failed: nothing reruns, nothing is reported again.
    report = run_child(tmp_path, "reopen", backend, str(limit))
    assert report is not None
    assert report["crash_looped"] == []
    assert runs(tmp_path) == limit + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_recoveries_none_never_gives_up(tmp_path: Path, backend: str) -> None:
    assert run_child(tmp_path, "poison", backend, "none") is None
    for _ in range(3):
        assert run_child(tmp_path, "reopen", backend, "none") is None
    assert runs(tmp_path) == 4
    loaded = load(tmp_path / "pool.jsonl")
    assert loaded is not None
    (record,) = loaded.tasks.values()
    assert record.status is Status.QUEUED


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_interrupted_run_does_not_use_up_retries(tmp_path: Path, backend: str) -> None:
    # retries=1: run 1 is killed mid-attempt, run 2 fails, run 3 (the one retry) succeeds.
    assert run_child(tmp_path, "flaky", backend, "default") is None
    report = run_child(tmp_path, "reopen", backend, "default")
    assert report is not None
    (outcome,) = report["outcomes"].values()
    assert outcome == ["completed", "f done on run 3"]
    (recoveries,) = report["recoveries"].values()
    assert recoveries == 1
    assert runs(tmp_path) == 3


class TestSetting:
    @pytest.mark.parametrize("value", [True, 1.0, "3"])
    async def test_max_recoveries_of_the_wrong_type_is_refused(
        self, journal_path: Path, value: object
    ) -> None:
        with pytest.raises(TypeError, match="max_recoveries"):
            async with harnpool.open_pool(journal_path, max_recoveries=value):  # type: ignore[arg-type]
                pass
        assert not journal_path.exists()

    async def test_negative_max_recoveries_is_refused(self, journal_path: Path) -> None:
        with pytest.raises(ValueError, match="max_recoveries"):
            async with harnpool.open_pool(journal_path, max_recoveries=-1):
                pass
        assert not journal_path.exists()

    async def test_max_recoveries_zero_fails_a_task_at_its_first_interruption(
        self, journal_path: Path
    ) -> None:
        # Leaving the block by an exception leaves a running task "running", as a crash would.
        async def hang() -> None:
            await anyio.sleep_forever()

        class Leave(Exception):
            pass

        with pytest.raises(Leave):
            async with harnpool.open_pool(journal_path) as pool:
                task_id = await pool.submit(hang, key="h")
                while pool.info(task_id).status is not Status.RUNNING:
                    await anyio.lowlevel.checkpoint()
                await pool._storage.flush()
                raise Leave
        async with harnpool.open_pool(journal_path, max_recoveries=0) as pool:
            assert pool.recovery.crash_looped == (task_id,)
            assert pool.recovery.requeued == ()
            info = pool.info(task_id)
            assert (info.status, info.recoveries, info.attempts) == (Status.FAILED, 1, 1)
            with pytest.raises(harnpool.TaskFailed) as caught:
                await pool.wait(task_id)
            assert caught.value.error_type == "harnpool.TaskCrashLoop"
            assert isinstance(caught.value.__cause__, harnpool.TaskCrashLoop)
            assert caught.value.__cause__.recoveries == 1
