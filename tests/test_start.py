"""When a submitted task may start: ``start="strict"`` (the default) or ``"eager"``."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

import harnpool
from harnpool import _journal


async def noop() -> None:
    return None


class _HeldSync:
    """Holds the journal's next fdatasync until released, and says when it is held."""

    def __init__(self) -> None:
        self.held = threading.Event()
        self.release = threading.Event()
        self._real = _journal._sync_data

    def __call__(self, fd: int) -> None:
        if not self.release.is_set():
            self.held.set()
            assert self.release.wait(30), "the test never released the fdatasync"
        self._real(fd)


class TestEager:
    async def test_a_task_starts_before_its_submit_returns(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        started = anyio.Event()

        async def work() -> int:
            started.set()
            return 7

        sync = _HeldSync()
        ids: list[str] = []
        async with harnpool.open_pool(journal_path, start="eager") as pool:
            monkeypatch.setattr(_journal, "_sync_data", sync)

            async def submit() -> None:
                ids.append(await pool.submit(work))

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit)
                with anyio.fail_after(10):
                    await started.wait()
                # It ran, but its queued record is not durable: no id yet.
                assert ids == []
                sync.release.set()
            with anyio.fail_after(10):
                assert await pool.wait(ids[0]) == 7
        loaded = _journal.load(journal_path)
        assert loaded is not None
        assert loaded.tasks[ids[0]].status is harnpool.Status.COMPLETED

    async def test_a_task_queued_run_and_finished_in_one_flush_is_one_line(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ran = anyio.Event()

        async def work() -> int:
            ran.set()
            return 1

        sync = _HeldSync()
        ids: list[str] = []
        async with harnpool.open_pool(journal_path, start="eager") as pool:
            monkeypatch.setattr(_journal, "_sync_data", sync)

            async def submit(fn: Callable[[], Awaitable[object]]) -> None:
                ids.append(await pool.submit(fn))

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit, noop)
                assert await anyio.to_thread.run_sync(sync.held.wait, 10)
                # While that flush is held, the next task is queued, runs and finishes.
                tg.start_soon(submit, work)
                with anyio.fail_after(10):
                    await ran.wait()
                sync.release.set()
            with anyio.fail_after(10):
                assert await pool.wait(ids[1]) == 1
        task_id = ids[1].encode()
        lines = [line for line in journal_path.read_bytes().splitlines() if task_id in line]
        assert len(lines) == 1
        assert b'"completed"' in lines[0]


class TestStrict:
    async def test_a_task_starts_only_once_its_submit_is_durable(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        started: list[str] = []

        async def work() -> None:
            started.append("work")

        sync = _HeldSync()
        ids: list[str] = []
        async with harnpool.open_pool(journal_path) as pool:
            monkeypatch.setattr(_journal, "_sync_data", sync)

            async def submit() -> None:
                ids.append(await pool.submit(work))

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit)
                assert await anyio.to_thread.run_sync(sync.held.wait, 10)
                # The flush is held in the writer thread; the worker has had every
                # chance to run while the loop waited for the thread.
                await anyio.wait_all_tasks_blocked()
                assert started == []
                sync.release.set()
            with anyio.fail_after(10):
                await pool.wait(ids[0])
        assert started == ["work"]
