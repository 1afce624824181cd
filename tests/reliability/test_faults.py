"""Write and fsync failures: the pool stops, acknowledges nothing more, and reopens whole.

Failures are injected in process at chosen calls (``harnpool._journal._sync_data``
for fdatasync, ``os.write`` for writes, both only on the journal's file), and
for real in a child process whose RLIMIT_FSIZE cuts a write short and then
fails it with EFBIG. A ledger kept outside the journal records what the pool
acknowledged: every id ``submit`` returned and every result ``wait`` returned.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

import harnpool
from harnpool import _journal
from harnpool._journal import load

from ._loader_helpers import ReportFigures


async def echo(n: int) -> int:
    return n


class Ledger:
    """What the pool acknowledged, kept outside the journal."""

    def __init__(self) -> None:
        self.submitted: dict[str, str] = {}  # key -> id
        self.results: dict[str, int] = {}  # id -> result
        self.refused = 0

    def check_reopened(self, path: Path) -> _journal.Loaded:
        """The journal loads and holds every acknowledged task and result."""
        loaded = load(path)
        assert loaded is not None
        for key, task_id in self.submitted.items():
            record = loaded.tasks[task_id]
            assert record.key == key
        for task_id, value in self.results.items():
            record = loaded.tasks[task_id]
            assert record.status is harnpool.Status.COMPLETED
            assert not isinstance(record.result, msgspec.UnsetType)
            assert msgspec.json.decode(record.result) == value
        return loaded


class Injector:
    """Counts the journal's fdatasync and write calls, and fails the armed one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        self.path = path
        self.syncs = 0
        self.writes = 0
        self.fail_sync_at: int | None = None
        self.fail_write_at: int | None = None
        self.short_write = False
        self.failed_at_size: int | None = None
        #: Calls on the journal after the injected failure: must stay 0 (never retried).
        self.after_failure = 0
        #: Set by the failing call; it then waits for ``proceed`` before raising.
        self.entered = threading.Event()
        self.proceed = threading.Event()
        self.proceed.set()
        self._real_sync = _journal._sync_data
        self._real_write = os.write
        monkeypatch.setattr(_journal, "_sync_data", self._sync)
        monkeypatch.setattr(os, "write", self._write)

    def _is_journal(self, fd: int) -> bool:
        try:
            a, b = os.fstat(fd), os.stat(self.path)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def _fail(self, error: int) -> OSError:
        self.failed_at_size = os.stat(self.path).st_size
        self.entered.set()
        self.proceed.wait()
        return OSError(error, f"injected {errno.errorcode[error]}")

    def _sync(self, fd: int) -> None:
        if self.failed_at_size is not None:
            self.after_failure += 1
        self.syncs += 1
        if self.syncs == self.fail_sync_at:
            raise self._fail(errno.EIO)
        self._real_sync(fd)

    def _write(self, fd: int, data: Any) -> int:
        if not self._is_journal(fd):
            return self._real_write(fd, data)
        if self.failed_at_size is not None:
            self.after_failure += 1
        self.writes += 1
        if self.writes == self.fail_write_at:
            if self.short_write and len(data) > 1:
                # Half goes to disk; the call that would write the rest fails.
                self.short_write = False
                self.fail_write_at += 1
                return self._real_write(fd, data[: len(data) // 2])
            raise self._fail(errno.ENOSPC)
        return self._real_write(fd, data)

    def arm_sync(self, after: int = 0) -> None:
        self.fail_sync_at = self.syncs + 1 + after

    def arm_write(self, after: int = 0, *, short: bool = False) -> None:
        self.fail_write_at = self.writes + 1 + after
        self.short_write = short


async def _run_until_failure(pool: harnpool.Pool, ledger: Ledger, tasks: int) -> int:
    """Submit and wait for tasks one by one until the journal fails; return how many ran."""
    for n in range(tasks):
        try:
            task_id = await pool.submit(echo, n, key=f"k{n}", priority=n % 3)
        except harnpool.JournalWriteError:
            return n
        ledger.submitted[f"k{n}"] = task_id
        try:
            ledger.results[task_id] = await pool.wait(task_id)
        except harnpool.JournalWriteError:
            return n
    pytest.fail("the injected failure never happened")


async def _assert_stopped(pool: harnpool.Pool, ledger: Ledger) -> None:
    """Every later submit and wait is refused with JournalWriteError."""
    attempts: list[Callable[[], Any]] = [
        lambda: pool.submit(echo, -1),
        lambda: pool.submit(echo, -2, key="k0"),
        lambda: pool.submit_many([harnpool.Job(echo, -3)]),
    ]
    attempts += [functools.partial(pool.wait, task_id) for task_id in ledger.results]
    for attempt in attempts:
        with pytest.raises(harnpool.JournalWriteError) as info:
            await attempt()
        assert isinstance(info.value, OSError)
        assert info.value.path == pool.path
        ledger.refused += 1


async def _resume(path: Path, ledger: Ledger) -> int:
    """Reopen, re-attach every acknowledged key, and return how many ran again."""
    ran: list[str] = []

    async def count(key: str) -> int:
        ran.append(key)
        return int(key[1:])

    async with harnpool.open_pool(path) as pool:
        for key in ledger.submitted:
            task_id = await pool.submit(count, key, key=key)
            assert task_id == ledger.submitted[key]
            with anyio.fail_after(10):
                result = await pool.wait(task_id)
            if task_id in ledger.results:
                assert result == ledger.results[task_id]
    finished = {key for key, task_id in ledger.submitted.items() if task_id in ledger.results}
    assert not finished & set(ran), "a task whose result was acknowledged ran again"
    return len(ran)


@pytest.mark.parametrize("fail_at", [1, 2, 3, 6])
async def test_fsync_failure_stops_the_pool(
    fail_at: int, journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger()
    with pytest.raises(harnpool.JournalWriteError) as leaving:
        async with harnpool.open_pool(journal_path) as pool:
            injector = Injector(monkeypatch, journal_path)
            injector.arm_sync(after=fail_at - 1)
            await _run_until_failure(pool, ledger, tasks=20)
            assert injector.syncs == fail_at
            await _assert_stopped(pool, ledger)
            assert "failed" in repr(pool)
    assert isinstance(leaving.value.__cause__, OSError)
    assert leaving.value.__cause__.errno == errno.EIO
    assert injector.syncs == fail_at, "a failed fsync was retried"
    assert injector.after_failure == 0, "the journal was written after a failure"
    monkeypatch.undo()
    loaded = ledger.check_reopened(journal_path)
    # A record whose fsync failed may be in the file; nobody was told of it.
    unacknowledged = loaded.tasks.keys() - set(ledger.submitted.values())
    assert len(unacknowledged) <= 1
    await _resume(journal_path, ledger)


@pytest.mark.parametrize("short", [False, True], ids=["ENOSPC", "short write then ENOSPC"])
@pytest.mark.parametrize("fail_at", [1, 4])
async def test_write_failure_stops_the_pool(
    fail_at: int, short: bool, journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger()
    with pytest.raises(harnpool.JournalWriteError) as leaving:
        async with harnpool.open_pool(journal_path) as pool:
            injector = Injector(monkeypatch, journal_path)
            injector.arm_write(after=fail_at - 1, short=short)
            await _run_until_failure(pool, ledger, tasks=20)
            await _assert_stopped(pool, ledger)
    assert isinstance(leaving.value.__cause__, OSError)
    assert leaving.value.__cause__.errno == errno.ENOSPC
    assert injector.after_failure == 0, "the journal was written after a failure"
    # No fsync follows a failed write: what was written is not durable and nobody hears of it.
    assert injector.syncs == fail_at - 1
    monkeypatch.undo()
    loaded = ledger.check_reopened(journal_path)
    size = injector.failed_at_size
    assert size is not None
    if short:
        assert loaded.torn is not None
        assert loaded.torn.offset < size
    else:
        assert loaded.torn is None
        assert journal_path.stat().st_size == size
    await _resume(journal_path, ledger)


async def test_fsync_failure_fails_the_in_flight_and_pending_batches(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger()
    outcomes: list[BaseException | str] = []

    async def submitter(n: int) -> None:
        try:
            outcomes.append(await pool.submit(echo, n, key=f"late{n}"))
        except harnpool.JournalWriteError as exc:
            outcomes.append(exc)

    with pytest.raises(harnpool.JournalWriteError):
        async with harnpool.open_pool(journal_path) as pool:
            injector = Injector(monkeypatch, journal_path)
            first = await pool.submit(echo, 0, key="k0")
            ledger.submitted["k0"] = first
            ledger.results[first] = await pool.wait(first)
            injector.proceed.clear()
            injector.arm_sync()
            async with anyio.create_task_group() as tg:
                tg.start_soon(submitter, 1)
                with anyio.fail_after(10):
                    await anyio.to_thread.run_sync(injector.entered.wait)
                # The first flush is stuck in its fsync; these records wait in the next batch.
                for n in range(2, 7):
                    tg.start_soon(submitter, n)
                with anyio.fail_after(10):
                    while pool.statistics().queued < 6:
                        await anyio.lowlevel.checkpoint()
                injector.proceed.set()
            assert len(outcomes) == 6
            assert all(isinstance(o, harnpool.JournalWriteError) for o in outcomes), outcomes
            await _assert_stopped(pool, ledger)
    assert injector.after_failure == 0
    monkeypatch.undo()
    loaded = ledger.check_reopened(journal_path)
    # The in-flight batch reached the file (only its fsync failed), the pending one never did.
    keys = {r.key for r in loaded.tasks.values()}
    assert "late1" in keys
    assert not keys & {f"late{n}" for n in range(2, 7)}


CHILD = r"""
import json, os, resource, signal, sys

import anyio
import anyio.lowlevel

import harnpool


async def echo(n: int) -> int:
    return n


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main(path: str, budget: int) -> None:
    try:
        async with harnpool.open_pool(path) as pool:
            limit = os.path.getsize(path) + budget
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            say(limit=limit)
            n = 0
            try:
                while True:
                    task_id = await pool.submit(echo, n, key=f"k{n}")
                    say(acked=task_id, key=f"k{n}")
                    say(result=task_id, value=await pool.wait(task_id))
                    n += 1
            except harnpool.JournalWriteError as exc:
                say(failed=exc.__cause__.errno)
            for late in (lambda: pool.submit(echo, -1), lambda: pool.wait("t1")):
                try:
                    await late()
                    say(late="acknowledged")
                except harnpool.JournalWriteError:
                    say(late="refused")
    except harnpool.JournalWriteError:
        say(block="JournalWriteError")


signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
anyio.run(main, sys.argv[1], int(sys.argv[2]))
"""


@pytest.mark.parametrize("budget", [700, 3001])
async def test_a_real_file_size_limit_stops_the_pool(
    budget: int, journal_path: Path, report_figures: ReportFigures
) -> None:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    child = await anyio.run_process(
        [sys.executable, "-c", CHILD, str(journal_path), str(budget)], env=env, check=False
    )
    assert child.returncode == 0, child.stderr.decode()
    # structlog's default logger prints its events to stdout too.
    said = [json.loads(line) for line in child.stdout.decode().splitlines() if line[:1] == "{"]
    ledger = Ledger()
    for fields in said:
        if "acked" in fields:
            ledger.submitted[fields["key"]] = fields["acked"]
        if "result" in fields:
            ledger.results[fields["result"]] = fields["value"]
    assert {"failed": errno.EFBIG} in said
    assert [f["late"] for f in said if "late" in f] == ["refused", "refused"]
    assert said[-1] == {"block": "JournalWriteError"}
    limit = said[0]["limit"]
    assert journal_path.stat().st_size <= limit
    loaded = ledger.check_reopened(journal_path)
    rerun = await _resume(journal_path, ledger)
    report_figures(
        "RLIMIT_FSIZE",
        {
            "acknowledged": len(ledger.submitted),
            "results": len(ledger.results),
            "torn_tail": loaded.torn is not None,
            "resumed_unfinished": rerun,
        },
    )
