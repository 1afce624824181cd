"""Control: registered tasks resume on their own, retries, timeouts, cancel, backpressure,
strategies, retention and events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import structlog.testing

import harnpool
from harnpool import Job, Status, _journal


class Order(msgspec.Struct, frozen=True):
    number: int
    items: tuple[str, ...]


@harnpool.task(name="tests.control.pack")
async def pack(order: Order, gift: bool) -> Order:
    return Order(order.number * 10, (*order.items, "gift") if gift else order.items)


GATES: dict[str, anyio.Event] = {}


@harnpool.task(name="tests.control.held")
async def held(n: int) -> int:
    await GATES["held"].wait()
    return n


FLAKY_CALLS: list[str] = []
FLAKY_STARTED: dict[str, anyio.Event] = {}


@harnpool.task(name="tests.control.flaky")
async def flaky(key: str, failures: int) -> str:
    FLAKY_CALLS.append(key)
    if key in FLAKY_STARTED:
        FLAKY_STARTED[key].set()
    if FLAKY_CALLS.count(key) <= failures:
        raise ConnectionError(f"attempt {FLAKY_CALLS.count(key)} of {key}")
    return f"{key} ok"


class Leave(Exception):
    """Ends a pool block the way a crash would leave the journal: nothing drained."""


def records_for(path: Path, task_id: str) -> list[dict[str, object]]:
    lines = path.read_bytes().splitlines()
    decoded = [msgspec.json.decode(line) for line in lines]
    return [d for d in decoded if d.get("id") == task_id]


class TestRegisteredTasks:
    async def test_a_reopened_pool_runs_unfinished_registered_tasks_on_its_own(
        self, journal_path: Path
    ) -> None:
        GATES["held"] = anyio.Event()
        with pytest.raises(Leave):
            async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
                blocker = await pool.submit(held, 0)
                await anyio.wait_all_tasks_blocked()
                packed = await pool.submit(pack, Order(4, ("tea",)), True, key="order-4")
                raise Leave
        [record] = [r for r in records_for(journal_path, packed) if r["status"] == "queued"]
        assert record["name"] == "tests.control.pack"
        assert record["args"] == [{"number": 4, "items": ["tea"]}, True]
        GATES["held"].set()
        async with harnpool.open_pool(journal_path) as pool:
            assert set(pool.recovery.resumed) == {blocker, packed}
            assert pool.recovery.requeued == (blocker,)
            # nobody submits again: the arguments come back typed from the journal
            assert await pool.wait(packed) == Order(40, ("tea", "gift"))
            assert await pool.wait(blocker) == 0

    async def test_arguments_that_cannot_be_stored_are_refused_before_writing(
        self, journal_path: Path
    ) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            size = journal_path.stat().st_size
            unstorable: Any = object()
            with pytest.raises(harnpool.ArgumentsNotEncodableError, match="object") as info:
                await pool.submit(pack, unstorable, False)
            assert isinstance(info.value, TypeError)
            assert journal_path.stat().st_size == size
            assert pool.tasks() == []

    async def test_an_unknown_name_waits_to_be_attached(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path):
            pass  # create the journal
        # write a task whose registered name this process does not know
        journal_path.write_bytes(
            journal_path.read_bytes()
            + msgspec.json.encode(
                harnpool._records.TaskRecord(
                    id="t1",
                    seq=1,
                    status=Status.QUEUED,
                    submitted_at=1.0,
                    name="elsewhere:gone",
                    args=msgspec.Raw(b"[]"),
                    key="gone",
                )
            )
            + b"\n"
        )
        with structlog.testing.capture_logs() as logs:
            async with harnpool.open_pool(journal_path) as pool:
                assert pool.recovery.unresolved == ("t1",)
                assert pool.statistics().waiting_for_function == 1

                async def replacement() -> str:
                    return "attached"

                assert await pool.submit(replacement, key="gone") == "t1"
                assert await pool.wait("t1") == "attached"
        assert any(e["event"] == "task.unresolved" for e in logs)

    async def test_a_registered_result_is_typed_after_reopen(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            task_id = await pool.submit(pack, Order(1, ()), False)
            await pool.wait(task_id)
        async with harnpool.open_pool(journal_path) as pool:  # nothing re-attached
            assert await pool.wait(task_id) == Order(10, ())

    def test_one_name_cannot_mean_two_functions(self) -> None:
        async def other(order: Order, gift: bool) -> Order:
            return order

        with pytest.raises(ValueError, match="already registered"):
            harnpool.task(name="tests.control.pack")(other)


class TestRetries:
    async def test_failed_attempts_are_retried_and_each_is_journaled(
        self, journal_path: Path
    ) -> None:
        async with harnpool.open_pool(journal_path, retry_backoff=0.001) as pool:
            task_id = await pool.submit(flaky, "r1", 2, retries=3, key="r1")
            assert await pool.wait(task_id) == "r1 ok"
            info = pool.info(task_id)
        assert FLAKY_CALLS.count("r1") == 3
        assert info.attempts == 3
        retries = [
            r
            for r in records_for(journal_path, task_id)
            if r["status"] == "queued" and "not_before" in r
        ]
        assert [r["error_message"] for r in retries] == ["attempt 1 of r1", "attempt 2 of r1"]
        assert all(r["error_type"] == "builtins.ConnectionError" for r in retries)

    async def test_retries_run_out(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path, retries=1, retry_backoff=0.001) as pool:
            task_id = await pool.submit(flaky, "r2", 5)
            with pytest.raises(harnpool.TaskFailed, match="attempt 2 of r2") as info:
                await pool.wait(task_id)
        assert FLAKY_CALLS.count("r2") == 2
        assert info.value.error_type == "builtins.ConnectionError"

    async def test_only_the_listed_exceptions_are_retried(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path, retry_backoff=0.001) as pool:
            task_id = await pool.submit(flaky, "r3", 1, retries=5, retry_on=[ValueError])
            with pytest.raises(harnpool.TaskFailed):
                await pool.wait(task_id)
            retried = await pool.submit(flaky, "r4", 1, retries=5, retry_on=[OSError])
            assert await pool.wait(retried) == "r4 ok"  # ConnectionError is an OSError
        assert FLAKY_CALLS.count("r3") == 1

    async def test_a_retry_scheduled_before_a_crash_happens_after_it_at_its_time(
        self, journal_path: Path
    ) -> None:
        FLAKY_STARTED["r5"] = anyio.Event()
        with pytest.raises(Leave):
            async with harnpool.open_pool(journal_path, retry_backoff=0.4) as pool:
                task_id = await pool.submit(flaky, "r5", 1, retries=2)
                with anyio.fail_after(10):
                    await FLAKY_STARTED["r5"].wait()
                await anyio.wait_all_tasks_blocked()  # the failed attempt is recorded
                due = pool.info(task_id).not_before
                raise Leave
        assert due is not None
        async with harnpool.open_pool(journal_path) as pool:
            assert task_id in pool.recovery.resumed
            assert await pool.wait(task_id) == "r5 ok"
            info = pool.info(task_id)
        assert info.attempts == 2
        assert info.started_at is not None
        assert info.started_at >= due

    async def test_a_timeout_cancels_the_attempt_and_counts_as_a_failure(
        self, journal_path: Path
    ) -> None:
        started = 0

        async def hangs() -> None:
            nonlocal started
            started += 1
            await anyio.sleep_forever()

        async with harnpool.open_pool(journal_path, retry_backoff=0.001) as pool:
            task_id = await pool.submit(hangs, timeout=0.02, retries=1)
            with pytest.raises(harnpool.TaskFailed) as info:
                await pool.wait(task_id)
        assert started == 2
        assert info.value.error_type == "builtins.TimeoutError"
        assert "timeout of 0.02 seconds" in info.value.error_message


class TestWaitAndCancel:
    async def test_wait_with_a_timeout_leaves_the_task_alone(self, journal_path: Path) -> None:
        gate = anyio.Event()

        async def slow() -> str:
            await gate.wait()
            return "done"

        async with harnpool.open_pool(journal_path) as pool:
            task_id = await pool.submit(slow)
            with pytest.raises(harnpool.WaitTimeout) as info:
                await pool.wait(task_id, timeout=0.01)
            assert isinstance(info.value, TimeoutError)
            assert pool.info(task_id).status is Status.RUNNING
            gate.set()
            assert await pool.wait(task_id, timeout=5) == "done"

    async def test_cancel_a_queued_a_running_and_a_finished_task(self, journal_path: Path) -> None:
        stopped = anyio.Event()

        async def forever() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                stopped.set()

        async def quick() -> int:
            return 1

        async with harnpool.open_pool(journal_path, max_concurrent=1) as pool:
            done = await pool.submit(quick)
            await pool.wait(done)
            running = await pool.submit(forever, key="running")
            queued = await pool.submit(quick, key="queued")
            await anyio.wait_all_tasks_blocked()
            assert await pool.cancel(queued) is True
            assert await pool.cancel(running) is True
            assert stopped.is_set()
            assert await pool.cancel(done) is False
            assert await pool.cancel(queued) is False
            for task_id in (queued, running):
                with pytest.raises(harnpool.TaskCancelled):
                    await pool.wait(task_id)
            assert pool.statistics().cancelled == 2
            assert await pool.wait(done) == 1
        async with harnpool.open_pool(journal_path) as pool:  # durable
            assert pool.info(running).status is Status.CANCELLED
            assert pool.info(queued).reason == "cancelled"
            assert await pool.submit(quick, key="queued") == queued  # the key still dedupes


class TestBackpressure:
    async def fill(self, pool: harnpool.Pool, gate: anyio.Event) -> list[str]:
        async def blocker() -> None:
            await gate.wait()

        async def noop(n: int) -> int:
            return n

        await pool.submit(blocker)
        await anyio.wait_all_tasks_blocked()
        return [await pool.submit(noop, n) for n in range(2)]

    async def test_reject_raises_and_writes_nothing(self, journal_path: Path) -> None:
        gate = anyio.Event()
        async with harnpool.open_pool(
            journal_path, max_concurrent=1, max_queued=2, on_full="reject"
        ) as pool:
            await self.fill(pool, gate)
            size = journal_path.stat().st_size
            with pytest.raises(harnpool.QueueFull, match="max_queued=2"):
                await pool.submit(self.fill, pool, gate)
            assert journal_path.stat().st_size == size
            gate.set()

    async def test_block_waits_for_room(self, journal_path: Path) -> None:
        gate = anyio.Event()
        async with harnpool.open_pool(journal_path, max_concurrent=1, max_queued=2) as pool:
            await self.fill(pool, gate)
            submitted: list[str] = []

            async def submit() -> None:
                submitted.append(await pool.submit(anyio.sleep, 0))

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit)
                await anyio.wait_all_tasks_blocked()
                assert submitted == []
                gate.set()
            assert len(submitted) == 1

    @pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
    async def test_drop_records_the_dropped_task_rejected(
        self, journal_path: Path, policy: harnpool.OnFull
    ) -> None:
        gate = anyio.Event()
        async with harnpool.open_pool(
            journal_path, max_concurrent=1, max_queued=2, on_full=policy
        ) as pool:
            first, _second = await self.fill(pool, gate)
            newest = await pool.submit(anyio.sleep, 0)
            dropped = first if policy == "drop_oldest" else newest
            with pytest.raises(harnpool.TaskRejected) as info:
                await pool.wait(dropped)
            assert info.value.reason == f"{policy}_queue_full"
            assert pool.statistics().rejected == 1
            gate.set()
        async with harnpool.open_pool(journal_path) as pool:
            assert pool.info(dropped).status is Status.REJECTED


class TestStrategies:
    async def run_in_order(self, journal_path: Path, **options: object) -> list[str]:
        order: list[str] = []
        gate = anyio.Event()

        async def blocker() -> None:
            await gate.wait()

        async def record(name: str) -> None:
            order.append(name)

        async with harnpool.open_pool(journal_path, max_concurrent=1, **options) as pool:  # type: ignore[arg-type]
            await pool.submit(blocker, priority=100)
            await anyio.wait_all_tasks_blocked()
            await pool.submit_many(
                Job(record, name, priority=p, group=g)
                for name, p, g in [
                    ("a1", 0, "a"),
                    ("a2", 9, "a"),
                    ("a3", 0, "a"),
                    ("b1", 0, "b"),
                    ("b2", 5, "b"),
                ]
            )
            gate.set()
        return order

    async def test_fifo_ignores_priority(self, journal_path: Path) -> None:
        assert await self.run_in_order(journal_path, strategy="fifo") == [
            "a1",
            "a2",
            "a3",
            "b1",
            "b2",
        ]

    async def test_fair_alternates_groups(self, journal_path: Path) -> None:
        assert await self.run_in_order(journal_path, strategy="fair") == [
            "a2",
            "b2",
            "a1",
            "b1",
            "a3",
        ]

    async def test_the_strategy_is_kept_in_the_header(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path, strategy="lifo") as pool:
            assert pool.statistics().strategy == "lifo"
        loaded = _journal.load(journal_path)
        assert loaded is not None
        assert loaded.header.strategy == "lifo"


class TestRetention:
    async def test_keep_finished_drops_the_oldest_finished_tasks(self, journal_path: Path) -> None:
        async def noop(n: int) -> int:
            return n

        async with harnpool.open_pool(journal_path) as pool:
            ids = [await pool.submit(noop, n, key=f"k{n}") for n in range(5)]
            for task_id in ids:
                await pool.wait(task_id)
        async with harnpool.open_pool(journal_path, keep_finished=2) as pool:
            assert pool.recovery.dropped_finished == 3
            assert [t.id for t in pool.tasks()] == ids[3:]
            again = await pool.submit(noop, 0, key="k0")  # a dropped key no longer dedupes
            assert again not in ids
            assert again == "t6"  # and ids never repeat

    async def test_keep_finished_for_drops_by_age(self, journal_path: Path) -> None:
        async def noop() -> None:
            return None

        async with harnpool.open_pool(journal_path) as pool:
            await pool.wait(await pool.submit(noop))
        async with harnpool.open_pool(journal_path, keep_finished_for=3600) as pool:
            assert pool.recovery.dropped_finished == 0
        async with harnpool.open_pool(journal_path, keep_finished_for=0) as pool:
            assert pool.recovery.dropped_finished == 1
            assert pool.tasks() == []


class TestEvents:
    async def test_the_pool_is_silent_until_structlog_is_configured(
        self, journal_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            await pool.wait(await pool.submit(flaky, "e0", 0))
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("", "")

    async def test_transitions_are_logged_with_pool_task_and_key(self, journal_path: Path) -> None:
        async def quick() -> None:
            return None

        with structlog.testing.capture_logs() as logs:
            async with harnpool.open_pool(
                journal_path, retry_backoff=0.001, max_queued=1, on_full="drop_newest"
            ) as pool:
                # One batch: the first is queued when the second is admitted, whichever
                # worker starts when, so the full queue drops the second.
                task_id, _ = await pool.submit_many(
                    [harnpool.Job(flaky, "e1", 1, retries=1, key="e1"), harnpool.Job(quick)]
                )
                await pool.wait(task_id)
        events = [e["event"] for e in logs]
        for expected in (
            "pool.opened",
            "task.submitted",
            "task.started",
            "task.retry_scheduled",
            "task.completed",
            "task.rejected",
            "pool.closed",
        ):
            assert expected in events, expected
        submitted = next(e for e in logs if e["event"] == "task.submitted")
        assert (submitted["pool"], submitted["task_id"], submitted["key"]) == (
            str(journal_path),
            task_id,
            "e1",
        )
        for event in logs:  # every event names its pool; every task event its task and key
            assert event["pool"] == str(journal_path), event
            if event["event"].startswith("task."):
                assert {"task_id", "key"} <= event.keys(), event
