"""Retention and compaction while a pool is open: ``keep_finished`` and ``keep_finished_for``
keep memory and the journal bounded without a reopen."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import harnpool
from harnpool import Status, _journal, _transitions, _worker

_create_temporary = _journal._create_temporary

#: The online compaction floor the tests use, so a few hundred tasks compact.
FLOOR = 200


@pytest.fixture
def small_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_journal, "COMPACT_MIN_LINES", FLOOR)


class FakeTime:
    """Stands in for the ``time`` module where the pool stamps and judges finish times."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime(1_000_000.0)
    monkeypatch.setattr(_transitions, "time", fake)
    monkeypatch.setattr(_worker, "time", fake)
    return fake


async def square(n: int) -> int:
    return n * n


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


class JournalEvents:
    """Stands in for the journal's ``emit``: counts its events, and lets a test wait for one."""

    def __init__(self) -> None:
        self.seen: collections.Counter[str] = collections.Counter()
        self.fields: list[tuple[str, dict[str, Any]]] = []
        self.changed: anyio.Event | None = None

    def emit(self, level: str, event: str, /, **fields: Any) -> None:
        self.seen[event] += 1
        self.fields.append((event, fields))
        if self.changed is not None:
            self.changed.set()

    async def wait_for(self, event: str, count: int = 1) -> None:
        with anyio.fail_after(10):
            while self.seen[event] < count:
                self.changed = anyio.Event()
                await self.changed.wait()


@pytest.fixture
def journal_events(monkeypatch: pytest.MonkeyPatch) -> JournalEvents:
    events = JournalEvents()
    monkeypatch.setattr(_journal, "emit", events.emit)
    return events


class TestRetentionWhileOpen:
    async def test_keep_finished_drops_the_oldest_as_tasks_finish(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path, keep_finished=2) as pool:
            ids = []
            for n in range(5):
                ids.append(await pool.submit(square, n, key=f"k{n}"))
                assert await pool.wait(ids[-1]) == n * n
            assert [t.id for t in pool.tasks()] == ids[3:]
            stats = pool.statistics()
            assert (stats.completed, stats.dropped_finished) == (2, 3)
            with pytest.raises(harnpool.UnknownTaskError) as caught:
                await pool.wait(ids[0])
            assert caught.value.dropped
            assert "keep_finished" in str(caught.value)
            # as after a reopen with retention: a dropped key is free, ids never repeat
            again = await pool.submit(square, 7, key="k0")
            assert again == "t6"
            assert await pool.wait(again) == 49
            # a kept key still deduplicates
            assert await pool.submit(square, 9, key="k4") == ids[4]
            kept = [t.id for t in pool.tasks()]
        assert kept == [ids[4], "t6"]
        async with harnpool.open_pool(journal_path, keep_finished=2) as pool:
            assert [t.id for t in pool.tasks()] == kept

    async def test_keep_finished_zero_keeps_only_unfinished_tasks(self, journal_path: Path) -> None:
        release = anyio.Event()

        async def blocked() -> str:
            await release.wait()
            return "done"

        async with harnpool.open_pool(journal_path, max_concurrent=2, keep_finished=0) as pool:
            waiting = await pool.submit(blocked)
            quick = await pool.submit(square, 3)
            assert await pool.wait(quick) == 9
            assert [t.id for t in pool.tasks()] == [waiting]
            assert pool.info(waiting).status in {Status.QUEUED, Status.RUNNING}
            release.set()
            # a waiter already waiting is told the outcome, even if the task is then dropped
            assert await pool.wait(waiting) == "done"
            assert pool.tasks() == []
            assert pool.statistics().dropped_finished == 2

    async def test_tasks_rejected_at_submit_are_dropped_too(self, journal_path: Path) -> None:
        release = anyio.Event()

        async def blocked() -> None:
            await release.wait()

        async with harnpool.open_pool(
            journal_path, max_concurrent=1, max_queued=1, on_full="drop_newest", keep_finished=2
        ) as pool:
            running = await pool.submit(blocked)
            await pool.submit(blocked)  # queued (or rejected): the queue is full from here on
            rejected = [await pool.submit(square, n) for n in range(5)]
            assert [t.id for t in pool.tasks() if t.status is Status.REJECTED] == rejected[3:]
            assert pool.statistics().dropped_finished >= 3
            release.set()
            await pool.wait(running)

    async def test_results_of_tasks_retention_drops_meanwhile(self, journal_path: Path) -> None:
        # Waited for before they finished: results() has them, as wait() would.
        release = anyio.Event()
        got: list[int] = []

        async def gated(n: int) -> int:
            await release.wait()
            return n * n

        async with harnpool.open_pool(journal_path, keep_finished=1) as pool:
            ids = [await pool.submit(gated, n) for n in range(5)]

            async def collect() -> None:
                got.extend(await pool.results(ids))

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(collect)
                    await anyio.wait_all_tasks_blocked()
                    release.set()
            assert got == [n * n for n in range(5)]
            assert pool.statistics().dropped_finished == 4

    async def test_unknown_ids_are_not_called_dropped(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path, keep_finished=0) as pool:
            await pool.wait(await pool.submit(square, 1))
            for never_given in ("t2", "t0", "x1", "t", "t" + "1" * 5000, "t\u0661"):
                with pytest.raises(harnpool.UnknownTaskError) as caught:
                    pool.info(never_given)
                assert not caught.value.dropped
        async with harnpool.open_pool(journal_path, keep_finished=0) as pool:
            with pytest.raises(harnpool.UnknownTaskError) as caught:
                pool.info("t1")
            assert caught.value.dropped  # dropped on open

    async def test_keep_finished_for_drops_by_age_as_tasks_finish(
        self, journal_path: Path, clock: FakeTime
    ) -> None:
        async with harnpool.open_pool(journal_path, keep_finished_for=60) as pool:
            old = [await pool.submit(square, n, key=f"old{n}") for n in range(2)]
            for task_id in old:
                await pool.wait(task_id)
            clock.now += 30
            middle = await pool.submit(square, 5)
            await pool.wait(middle)
            assert {t.id for t in pool.tasks()} == {*old, middle}  # none is 60 s old yet
            clock.now += 40  # the first two finished 70 s ago, the third 40 s ago
            young = await pool.submit(square, 6)
            await pool.wait(young)
            assert [t.id for t in pool.tasks()] == [middle, young]
            assert pool.statistics().dropped_finished == 2
            assert await pool.submit(square, 2, key="old0") not in old

    async def test_a_reopened_pool_goes_on_dropping_what_it_found(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            found = [await pool.submit(square, n) for n in range(3)]
            for task_id in found:
                await pool.wait(task_id)
        async with harnpool.open_pool(journal_path, keep_finished=3) as pool:
            assert pool.recovery.dropped_finished == 0
            new = await pool.submit(square, 4)
            await pool.wait(new)
            assert [t.id for t in pool.tasks()] == [*found[1:], new]

    async def test_memory_storage_forgets_dropped_tasks(self) -> None:
        from harnpool._memory import MemoryStorage
        from harnpool._pool import serve
        from harnpool._settings import _Settings

        storage = MemoryStorage()
        async with serve(storage, _Settings(max_concurrent=1, keep_finished=1)) as pool:
            first = await pool.submit(square, 1)
            await pool.wait(first)
            second = await pool.submit(square, 2)
            await pool.wait(second)
            assert list(storage.records) == [second]


@pytest.mark.usefixtures("small_floor")
class TestCompactionWhileOpen:
    async def test_the_journal_stays_bounded_with_keep_finished(
        self, journal_path: Path, journal_events: JournalEvents
    ) -> None:
        tasks, keep = 3_000, 10
        # one worker: tasks finish in submission order, as reopening orders them
        async with harnpool.open_pool(journal_path, keep_finished=keep) as pool:
            for start in range(0, tasks, 100):
                ids = await pool.submit_many(
                    [harnpool.Job(square, n) for n in range(start, start + 100)]
                )
                await pool.wait(ids[-1])
            await journal_events.wait_for("journal.compacted", 2)
            stats = pool.statistics()
        assert (stats.completed, stats.dropped_finished) == (keep, tasks - keep)
        # about three lines per task without compaction; far fewer with it
        assert _lines(journal_path) <= 4 * FLOOR
        assert not journal_path.with_name("pool.jsonl.compact").exists()
        async with harnpool.open_pool(journal_path, keep_finished=keep) as pool:
            kept = pool.tasks()
            assert [t.id for t in kept] == [f"t{n}" for n in range(tasks - keep + 1, tasks + 1)]
            assert {t.status for t in kept} == {Status.COMPLETED}
            assert await pool.wait(kept[-1].id) == (tasks - 1) ** 2
            assert await pool.submit(square, 0) == f"t{tasks + 1}"  # the counter survived

    async def test_superseded_records_are_compacted_and_nothing_is_lost(
        self, journal_path: Path, journal_events: JournalEvents, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Tasks whose start and end share a flush cost two lines: one dead per live.
        monkeypatch.setattr(_journal, "COMPACT_DEAD_PER_LIVE", 0.5)
        async with harnpool.open_pool(journal_path, max_concurrent=3) as pool:
            ids = await pool.submit_many([harnpool.Job(square, n) for n in range(400)])
            for task_id in ids:
                await pool.wait(task_id)
            await journal_events.wait_for("journal.compacted")
            assert pool.statistics().compactions >= 1
            # submits and finishes go on, written to the new file
            more = [await pool.submit(square, n, key=f"k{n}") for n in range(400, 410)]
            for task_id in more:
                await pool.wait(task_id)
        loaded = _journal.load(journal_path)
        assert loaded is not None
        assert loaded.torn is None
        assert _lines(journal_path) < 3 * 410
        async with harnpool.open_pool(journal_path) as pool:
            assert pool.recovery.tasks == 410
            for n, task_id in enumerate([*ids, *more]):
                assert await pool.wait(task_id) == n * n
            assert await pool.submit(square, 0, key="k405") == more[5]

    async def test_a_small_journal_is_not_compacted(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path, keep_finished=0) as pool:
            for n in range(FLOOR // 4):
                await pool.wait(await pool.submit(square, n))
            assert pool.statistics().compactions == 0

    async def test_a_failed_compaction_leaves_the_journal_going(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch, journal_events: JournalEvents
    ) -> None:
        def refuse(temporary: str, journal: object, flags: int = 0) -> int:
            raise PermissionError(13, "refused", temporary)

        async with harnpool.open_pool(journal_path, keep_finished=0) as pool:
            monkeypatch.setattr(_journal, "_create_temporary", refuse)
            for n in range(FLOOR):
                await pool.wait(await pool.submit(square, n, key=f"k{n}"))
            await journal_events.wait_for("journal.compaction_failed")
            monkeypatch.setattr(_journal, "_create_temporary", _create_temporary)
            last = await pool.submit(square, 3)
            assert await pool.wait(last) == 9
            assert pool.statistics().compactions == 0
        failed = [f for e, f in journal_events.fields if e == "journal.compaction_failed"]
        assert failed[0]["retry_after_lines"] > FLOOR
        assert not journal_path.with_name("pool.jsonl.compact").exists()
        async with harnpool.open_pool(journal_path) as pool:
            assert pool.recovery.tasks == FLOOR + 1

    async def test_a_failed_directory_sync_after_the_rename_stops_the_pool(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def fail(directory: str) -> None:
            raise OSError(5, "directory sync failed")

        fsync_dir = _journal._fsync_dir

        # Tasks whose start and end share a flush cost two lines: one dead per live.
        monkeypatch.setattr(_journal, "COMPACT_DEAD_PER_LIVE", 0.5)
        acked: list[str] = []
        with pytest.raises(harnpool.JournalWriteError):
            async with harnpool.open_pool(journal_path) as pool:
                monkeypatch.setattr(_journal, "_fsync_dir", fail)
                with anyio.fail_after(10):
                    while True:
                        acked.append(await pool.submit(square, len(acked), key=f"k{len(acked)}"))
        monkeypatch.setattr(_journal, "_fsync_dir", fsync_dir)
        async with harnpool.open_pool(journal_path) as pool:
            # the renamed journal holds everything acknowledged, with the same ids
            assert [t.id for t in pool.tasks()][: len(acked)] == acked
