"""Locking: one pool per journal, across processes and within one; a dead holder does not block.

The lock is ``flock`` on ``<journal>.lock``, which holds the holder's pid. Other
processes here are real ones (``_crash_lock.py``); the stale lock is left by a
child killed with SIGKILL while its pool was open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import msgspec
import pytest

import harnpool

CHILD = Path(__file__).with_name("_crash_lock.py")
#: Far longer than opening a pool and leaving it takes, even on a loaded machine.
CANCEL_DEADLINE = 20.0


class _Attempt(msgspec.Struct, frozen=True):
    locked: bool
    pid: int | None = None
    message: str = ""


async def _attempt_from_another_process(journal: Path) -> _Attempt:
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, str(CHILD), "try", str(journal)])
    return msgspec.json.decode(done.stdout.splitlines()[-1], type=_Attempt)


async def _blocked() -> None:
    await anyio.Event().wait()


async def test_second_process_is_refused_naming_the_holder(journal_path: Path) -> None:
    async with harnpool.open_pool(journal_path):
        attempt = await _attempt_from_another_process(journal_path)
    assert attempt.locked
    assert attempt.pid == os.getpid()
    assert f"process {os.getpid()}" in attempt.message
    assert str(journal_path) in attempt.message


async def test_second_pool_in_this_process_is_refused(journal_path: Path) -> None:
    async with harnpool.open_pool(journal_path) as pool:
        with pytest.raises(harnpool.JournalLockedError) as caught:
            async with harnpool.open_pool(journal_path):
                pytest.fail("a second pool opened on a locked journal")
        assert caught.value.pid == os.getpid()
        assert "this process" in str(caught.value)
        # The refusal did not disturb the pool that holds the lock.
        assert await pool.wait(await pool.submit(abs, -3)) == 3


async def test_holder_in_another_process_is_named_and_its_stale_lock_does_not_block(
    journal_path: Path,
) -> None:
    holder = await anyio.open_process(
        [sys.executable, str(CHILD), "hold", str(journal_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        with anyio.fail_after(60):
            output = b""
            while not output.endswith(b"ready\n"):
                output += await holder.stdout.receive()
        with pytest.raises(harnpool.JournalLockedError) as caught:
            async with harnpool.open_pool(journal_path):
                pytest.fail("opened a journal another process holds")
        assert caught.value.pid == holder.pid
        assert f"process {holder.pid}" in str(caught.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        with anyio.fail_after(60):
            await holder.wait()
        await holder.aclose()
    assert holder.returncode == -signal.SIGKILL
    lock_file = journal_path.with_name(journal_path.name + ".lock")
    assert lock_file.read_text().strip() == str(holder.pid)  # the dead holder's lock file stays

    async with harnpool.open_pool(journal_path) as pool:
        assert not pool.recovery.created
        assert lock_file.read_text().strip() == str(os.getpid())


async def test_lock_is_released_when_the_block_raises(journal_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        async with harnpool.open_pool(journal_path) as pool:
            await pool.submit(_blocked, key="stuck")
            raise ZeroDivisionError
    assert not (await _attempt_from_another_process(journal_path)).locked
    async with harnpool.open_pool(journal_path) as pool:
        assert [(t.key, t.status) for t in pool.tasks()] == [("stuck", harnpool.Status.QUEUED)]


@pytest.mark.parametrize("when", ["submitted", "running"])
def test_lock_is_released_when_the_block_is_cancelled(journal_path: Path, when: str) -> None:
    # In a child with a deadline: a pool that never lets go of its journal hangs, and
    # a shielded hang cannot be cut short from inside the process.
    child = [sys.executable, str(CHILD), "cancel", str(journal_path), when]
    try:
        done = subprocess.run(child, capture_output=True, timeout=CANCEL_DEADLINE, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the pool's block, cancelled with a task {when}, never exited")
    assert done.returncode == 0, done.stderr.decode()
    outcome = msgspec.json.decode(done.stdout.splitlines()[-1])
    assert outcome["cancelled"]
    assert outcome["reopened"] == [[outcome["task"], "queued"]]
