"""The pool: submit, order, concurrency, keys, results, failures, durability, lifecycle."""

from __future__ import annotations

import dataclasses
import datetime
import errno
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
import structlog.testing

import harnpool
from harnpool import Job, Status, TaskFailed, _journal


class Point(msgspec.Struct, frozen=True):
    x: int
    y: int


@dataclasses.dataclass(frozen=True)
class Receipt:
    number: int
    at: datetime.datetime
    ref: uuid.UUID


async def double(n: int) -> int:
    return 2 * n


async def make_point(x: int) -> Point:
    return Point(x, -x)


async def make_receipt(n: int) -> Receipt:
    return Receipt(n, datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), uuid.UUID(int=n))


async def pair(n: int) -> tuple[int, str]:
    return (n, str(n))


async def untyped(n: int):  # type: ignore[no-untyped-def]  # no annotation: plain JSON comes back
    return [n, {"n": n}]


async def boom(message: str) -> None:
    raise ValueError(message)


class Calls:
    """Counts how often each key's function ran, and in which order."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def count(self, name: str) -> int:
        return self.order.count(name)

    async def record(self, name: str) -> str:
        self.order.append(name)
        return name


class TestSubmitAndWait:
    async def test_wait_returns_what_the_async_function_returned(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path, max_concurrent=2) as pool:
            ids = [await pool.submit(double, n) for n in range(5)]
            assert [await pool.wait(i) for i in ids] == [0, 2, 4, 6, 8]
            assert len(set(ids)) == 5

    async def test_a_plain_function_runs_in_a_worker_thread(self, journal_path: Path) -> None:
        def where() -> int:
            return threading.get_ident()

        async with harnpool.open_pool(journal_path) as pool:
            thread = await pool.wait(await pool.submit(where))
        assert thread != threading.get_ident()

    async def test_a_coroutine_object_is_refused(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            with pytest.raises(TypeError, match="not a coroutine object"):
                await pool.submit(double(1))  # type: ignore[call-overload]
            with pytest.raises(TypeError, match="callable"):
                await pool.submit(42)  # type: ignore[call-overload]
            assert pool.tasks() == []

    async def test_unknown_ids_raise(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            with pytest.raises(harnpool.UnknownTaskError, match="t99") as info:
                await pool.wait("t99")
            assert isinstance(info.value, KeyError)
            with pytest.raises(harnpool.UnknownTaskError):
                pool.info("t99")

    async def test_max_concurrent_below_one_is_refused(self, journal_path: Path) -> None:
        with pytest.raises(ValueError, match="at least 1"):
            async with harnpool.open_pool(journal_path, max_concurrent=0):
                pass  # pragma: no cover


class TestOrderAndConcurrency:
    async def test_higher_priority_first_then_submission_order(self, journal_path: Path) -> None:
        calls = Calls()
        gate = anyio.Event()

        async def blocker() -> None:
            await gate.wait()

        async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
            await pool.submit(blocker)
            await anyio.wait_all_tasks_blocked()
            plan = [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -3), ("f", 9), ("g", 5)]
            for name, priority in plan:
                await pool.submit(calls.record, name, priority=priority)
            gate.set()
        assert calls.order == ["f", "b", "d", "g", "a", "c", "e"]

    @pytest.mark.parametrize("limit", [1, 3, 8])
    async def test_never_more_than_max_concurrent_and_every_slot_used(
        self, journal_path: Path, limit: int
    ) -> None:
        running = 0
        peak = 0
        workers: set[int] = set()

        async def job() -> None:
            nonlocal running, peak
            workers.add(anyio.get_current_task().id)
            running += 1
            peak = max(peak, running)
            await anyio.sleep(0.001)
            running -= 1

        async with harnpool.open_pool(journal_path, max_concurrent=limit) as pool:
            await pool.submit_many(Job(job) for _ in range(60))
            assert pool.statistics().max_concurrent == limit
        assert peak == limit
        # fixed workers, not a task per job
        assert len(workers) == limit

    async def test_a_task_that_never_suspends_does_not_starve_the_loop(
        self, journal_path: Path
    ) -> None:
        async def instant(n: int) -> int:
            return n

        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            async with harnpool.open_pool(journal_path) as pool:
                await pool.submit_many(Job(instant, n) for n in range(200))
                before = ticks
                await pool.wait(await pool.submit(instant, 0))
                assert ticks > before
            tg.cancel_scope.cancel()


class TestKeys:
    async def test_a_known_key_returns_the_same_task_in_every_status(
        self, journal_path: Path
    ) -> None:
        calls = Calls()
        gate = anyio.Event()
        started = anyio.Event()

        async def held(name: str) -> str:
            started.set()
            await gate.wait()
            return await calls.record(name)

        async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
            running = await pool.submit(held, "running", key="running")
            await started.wait()
            queued = await pool.submit(calls.record, "queued", key="queued")
            assert pool.info(running).status is Status.RUNNING
            assert pool.info(queued).status is Status.QUEUED
            assert await pool.submit(held, "again", key="running") == running
            assert await pool.submit(calls.record, "again", key="queued") == queued
            gate.set()
            done = await pool.submit(calls.record, "done", key="done")
            await pool.wait(done)
            failed = await pool.submit(boom, "x", key="failed")
            with pytest.raises(TaskFailed):
                await pool.wait(failed)
            assert await pool.submit(calls.record, "again", key="done") == done
            assert await pool.submit(calls.record, "again", key="failed") == failed
            assert await pool.wait(done) == "done"
        assert sorted(calls.order) == ["done", "queued", "running"]

    async def test_concurrent_submits_of_one_key_run_it_once(self, journal_path: Path) -> None:
        calls = Calls()
        ids: list[str] = []

        async def submit(pool: harnpool.Pool) -> None:
            ids.append(await pool.submit(calls.record, "k", key="same"))

        async with (
            harnpool.open_pool(journal_path, max_concurrent=4) as pool,
            anyio.create_task_group() as tg,
        ):
            for _ in range(20):
                tg.start_soon(submit, pool)
        assert len(set(ids)) == 1
        assert len(ids) == 20
        assert calls.order == ["k"]

    async def test_finished_keys_never_run_again_after_reopen(self, journal_path: Path) -> None:
        calls = Calls()
        async with harnpool.open_pool(journal_path) as pool:
            ok = await pool.submit(calls.record, "ok", key="ok")
            bad = await pool.submit(boom, "nope", key="bad")
        async with harnpool.open_pool(journal_path) as pool:
            assert await pool.submit(calls.record, "ok", key="ok") == ok
            assert await pool.submit(calls.record, "bad", key="bad") == bad
            assert await pool.wait(ok) == "ok"
            with pytest.raises(TaskFailed):
                await pool.wait(bad)
        assert calls.order == ["ok"]

    async def test_submit_many_dedupes_within_and_outside_the_batch(
        self, journal_path: Path
    ) -> None:
        calls = Calls()
        async with harnpool.open_pool(journal_path) as pool:
            old = await pool.submit(calls.record, "old", key="old")
            ids = await pool.submit_many(
                [
                    Job(calls.record, "a", key="a"),
                    Job(calls.record, "old", key="old"),
                    Job(calls.record, "a again", key="a"),
                    Job(calls.record, "b"),
                ]
            )
            assert ids[1] == old
            assert ids[0] == ids[2]
            assert len({ids[0], ids[1], ids[3]}) == 3
        assert sorted(calls.order) == ["a", "b", "old"]


class TestResults:
    @pytest.mark.parametrize(
        ("fn", "arg", "expected"),
        [
            (make_point, 3, Point(3, -3)),
            (
                make_receipt,
                7,
                Receipt(
                    7,
                    datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
                    uuid.UUID(int=7),
                ),
            ),
            (pair, 4, (4, "4")),
            (untyped, 5, [5, {"n": 5}]),
        ],
    )
    async def test_wait_gives_the_same_typed_value_before_and_after_reopen(
        self, journal_path: Path, fn: Callable[[int], Any], arg: int, expected: object
    ) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            task_id = await pool.submit(fn, arg, key="k")
            before = await pool.wait(task_id)
        async with harnpool.open_pool(journal_path) as pool:
            assert await pool.submit(fn, arg, key="k") == task_id  # re-attach: types the result
            after = await pool.wait(task_id)
        assert before == expected
        assert after == expected
        assert type(after) is type(expected)

    async def test_without_the_function_the_result_is_plain_json(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            # A plain str: reopened without the function, the result is not a Point.
            task_id: str = await pool.submit(make_point, 2)
            await pool.wait(task_id)
        async with harnpool.open_pool(journal_path) as pool:
            assert await pool.wait(task_id) == {"x": 2, "y": -2}

    async def test_a_result_that_cannot_be_stored_fails_only_its_task(
        self, journal_path: Path
    ) -> None:
        class Opaque:
            pass

        async def opaque() -> Opaque:
            return Opaque()

        async with harnpool.open_pool(journal_path) as pool:
            bad = await pool.submit(opaque)
            good = await pool.submit(double, 21)
            with pytest.raises(TaskFailed) as info:
                await pool.wait(bad)
            assert await pool.wait(good) == 42
        assert info.value.error_type == "harnpool.ResultNotEncodableError"
        assert "Opaque" in info.value.error_message
        assert isinstance(info.value.__cause__, harnpool.ResultNotEncodableError)
        assert isinstance(info.value.__cause__, TypeError)


class TestFailures:
    async def test_task_failed_carries_type_message_and_the_live_exception(
        self, journal_path: Path
    ) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            task_id = await pool.submit(boom, "disk on fire", key="fire")
            with pytest.raises(TaskFailed) as info:
                await pool.wait(task_id)
            assert pool.info(task_id).status is Status.FAILED
            assert pool.info(task_id).error_message == "disk on fire"
        error = info.value
        assert (error.task_id, error.key) == (task_id, "fire")
        assert error.error_type == "builtins.ValueError"
        assert error.error_message == "disk on fire"
        assert isinstance(error.__cause__, ValueError)
        assert "fire" in str(error)

    async def test_after_reopen_the_failure_is_known_by_type_and_message(
        self, journal_path: Path
    ) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            task_id = await pool.submit(boom, "gone")
            with pytest.raises(TaskFailed):
                await pool.wait(task_id)
        async with harnpool.open_pool(journal_path) as pool:
            with pytest.raises(TaskFailed) as info:
                await pool.wait(task_id)
        assert (info.value.error_type, info.value.error_message) == ("builtins.ValueError", "gone")
        assert info.value.__cause__ is None


class GatedSync:
    """Holds every journal fdatasync until released, to observe what waits for durability."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        real = _journal._sync_data

        def gated(fd: int) -> None:
            self.entered.set()
            self.release.wait(10)
            real(fd)

        monkeypatch.setattr(_journal, "_sync_data", gated)


class TestDurability:
    async def test_submit_returns_only_once_its_record_is_synced(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            gate = GatedSync(monkeypatch)
            returned: list[str] = []

            async def submit() -> None:
                returned.append(await pool.submit(double, 1))

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit)
                await anyio.to_thread.run_sync(gate.entered.wait, 10)
                await anyio.wait_all_tasks_blocked()
                assert returned == []
                gate.release.set()
            assert returned == ["t1"]

    async def test_wait_returns_only_once_the_completion_is_synced(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            task_id = await pool.submit(double, 4)
            gate = GatedSync(monkeypatch)
            results: list[int] = []

            async def wait() -> None:
                results.append(await pool.wait(task_id))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                while pool.info(task_id).status is not Status.COMPLETED:
                    await anyio.lowlevel.checkpoint()
                await anyio.to_thread.run_sync(gate.entered.wait, 10)
                await anyio.wait_all_tasks_blocked()
                assert results == []  # finished in memory, not yet durable
                gate.release.set()
            assert results == [8]

    async def test_concurrent_submitters_share_flushes(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path, max_concurrent=4) as pool:
            before = pool.statistics().flushes
            async with anyio.create_task_group() as tg:
                for n in range(64):
                    tg.start_soon(pool.submit, double, n)
            submitted = pool.statistics().flushes - before
        assert submitted < 64 // 4

    async def test_submit_many_is_one_flush(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
            gate = anyio.Event()

            async def held() -> None:
                await gate.wait()

            await pool.wait(await pool.submit(double, 0))
            await pool.submit(held)
            await anyio.wait_all_tasks_blocked()
            await pool._storage.flush()  # the "running" record of held, out of the count
            before = pool.statistics().flushes
            ids = await pool.submit_many(Job(double, n, priority=n % 3) for n in range(1000))
            assert pool.statistics().flushes - before == 1
            gate.set()
            assert [await pool.wait(i) for i in ids[:3]] == [0, 2, 4]


class TestLifecycle:
    async def test_leaving_normally_waits_for_every_task(self, journal_path: Path) -> None:
        finished: list[int] = []

        async def slow(n: int) -> None:
            await anyio.sleep(0.01)
            finished.append(n)

        async with harnpool.open_pool(journal_path, max_concurrent=2) as pool:
            await pool.submit_many(Job(slow, n) for n in range(6))
        assert sorted(finished) == list(range(6))
        loaded = _journal.load(journal_path)
        assert loaded is not None
        assert {r.status for r in loaded.tasks.values()} == {Status.COMPLETED}

    async def test_leaving_by_an_exception_cancels_running_tasks_and_keeps_them(
        self, journal_path: Path
    ) -> None:
        started = anyio.Event()
        cancelled = anyio.Event()

        async def forever() -> None:
            started.set()
            try:
                await anyio.sleep_forever()
            finally:
                cancelled.set()

        with pytest.raises(LookupError, match="mine"):
            async with harnpool.open_pool(journal_path) as pool:
                task_id = await pool.submit(forever, key="forever")
                await started.wait()
                raise LookupError("mine")
        assert cancelled.is_set()
        async with harnpool.open_pool(journal_path) as pool:
            assert pool.recovery.requeued == (task_id,)
            info = pool.info(task_id)
            assert (info.status, info.attempts, info.attached) == (Status.QUEUED, 1, False)

    async def test_a_cancelled_block_releases_the_lock(self, journal_path: Path) -> None:
        with anyio.move_on_after(0.05):
            async with harnpool.open_pool(journal_path) as pool:
                await pool.submit(anyio.sleep_forever)
                await anyio.sleep_forever()
        async with harnpool.open_pool(journal_path) as pool:
            assert len(pool.recovery.requeued) == 1

    async def test_a_closed_pool_refuses_use_but_can_be_read(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            task_id = await pool.submit(double, 1)
        with pytest.raises(harnpool.PoolClosedError, match="closed"):
            await pool.submit(double, 2)
        with pytest.raises(harnpool.PoolClosedError):
            await pool.wait(task_id)
        with pytest.raises(harnpool.PoolClosedError):
            await pool.submit_many([Job(double, 3)])
        assert pool.info(task_id).status is Status.COMPLETED
        assert "closed" in repr(pool)

    async def test_a_second_pool_on_one_journal_is_refused(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path):
            with pytest.raises(harnpool.JournalLockedError, match="this process"):
                async with harnpool.open_pool(journal_path):
                    pass  # pragma: no cover

    async def test_introspection(self, journal_path: Path) -> None:
        gate = anyio.Event()

        async def held() -> None:
            await gate.wait()

        async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
            a = await pool.submit(held, key="a", priority=2)
            await anyio.wait_all_tasks_blocked()
            b = await pool.submit(double, 1)
            stats = pool.statistics()
            assert (stats.running, stats.queued, stats.completed) == (1, 1, 0)
            assert [t.id for t in pool.tasks()] == [a, b]
            info = pool.info(a)
            assert (info.key, info.priority, info.seq, info.attempts) == ("a", 2, 1, 1)
            assert info.function is not None
            assert info.function.endswith("held")
            assert info.started_at is not None
            assert info.finished_at is None
            assert "running=1" in repr(pool)
            gate.set()
        stats = pool.statistics()
        assert (stats.running, stats.queued, stats.completed) == (0, 0, 2)
        with pytest.raises(AttributeError):  # a frozen snapshot
            info.status = Status.FAILED  # type: ignore[misc]


class TestRecovery:
    async def test_recovered_tasks_wait_for_their_function_then_run_in_their_old_place(
        self, journal_path: Path
    ) -> None:
        calls = Calls()
        stop = anyio.Event()

        async def never() -> None:
            await stop.wait()

        plan = [("low", 0), ("high", 5), ("low2", 0), ("mid", 2), ("high2", 5)]
        with pytest.raises(KeyError):
            async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
                await pool.submit(never, key="blocker", priority=9)
                await anyio.wait_all_tasks_blocked()
                for name, priority in plan:
                    await pool.submit(calls.record, name, key=name, priority=priority)
                raise KeyError("crash-like exit")
        assert calls.order == []
        gate = anyio.Event()

        async def held() -> None:
            await gate.wait()

        async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
            assert pool.recovery.queued == 6
            assert pool.statistics().waiting_for_function == 6
            await pool.submit(held, key="blocker")  # the interrupted one, first in line again
            await anyio.wait_all_tasks_blocked()
            assert calls.order == []
            for name, _ in reversed(plan):  # attach in the opposite order
                await pool.submit(calls.record, name, key=name)
            assert pool.statistics().waiting_for_function == 0
            gate.set()
        assert calls.order == ["high", "high2", "mid", "low", "low2"]

    async def test_a_torn_tail_is_reported_on_recovery(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            await pool.submit(double, 1)
        whole = journal_path.read_bytes()
        journal_path.write_bytes(whole + b'{"kind":"task","id":"t2","se')
        lines = whole.count(b"\n")
        with structlog.testing.capture_logs() as logs:
            async with harnpool.open_pool(journal_path) as pool:
                torn = pool.recovery.torn_tail
        assert torn is not None
        assert (torn.line, torn.offset) == (lines + 1, len(whole))
        assert [e["line"] for e in logs if e["event"] == "journal.torn_tail"] == [lines + 1]


class TestFailStop:
    async def test_a_failed_fsync_stops_the_pool_and_nothing_more_is_acknowledged(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls = 0
        real = _journal._sync_data

        def fail_third(fd: int) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise OSError(errno.EIO, "injected")
            real(fd)

        with pytest.raises(harnpool.JournalWriteError):
            async with harnpool.open_pool(journal_path) as pool:
                monkeypatch.setattr(_journal, "_sync_data", fail_third)
                acked = [await pool.submit(double, 1, key="one")]
                await pool.wait(acked[0])  # flush 2 (running + completed may share)
                with pytest.raises(harnpool.JournalWriteError):
                    while True:  # some later flush fails
                        acked.append(await pool.submit(double, 2))
                with pytest.raises(harnpool.JournalWriteError):
                    await pool.submit(double, 3)
                with pytest.raises(harnpool.JournalWriteError):
                    await pool.wait(acked[0])
                assert "failed" in repr(pool)
        assert calls == 3  # never retried
        monkeypatch.setattr(_journal, "_sync_data", real)
        async with harnpool.open_pool(journal_path) as pool:
            known = {t.id for t in pool.tasks()}
            assert set(acked) <= known
