"""What a task runs in (its context, current_task, structlog's context) and results as
they come (as_completed, results), run against every storage.

A pool on PostgreSQL runs every task in a clean context (a context cannot
cross processes); the others run it in a copy of its submitter's.
"""

from __future__ import annotations

import contextvars
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog
import structlog.contextvars
import structlog.testing

import harnpool
from harnpool import Job
from tests.task_state import state as _state

from .conftest import OpenOn, only_exclusive

#: A variable submitters set and tasks read and set.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def _registrations(pool: harnpool.Pool) -> int:
    """How many as_completed registrations the pool holds (none once iterations ended)."""
    if hasattr(pool, "_watchers"):  # a pool on PostgreSQL
        watchers: dict[str, list[object]] = pool._watchers
    else:
        watchers = pool._tasks.watchers  # type: ignore[assignment]
    return sum(len(w) for w in watchers.values())


async def read_and_set(token: str, value: str) -> str:
    seen = request_id.get()
    request_id.set(value)
    await anyio.lowlevel.checkpoint()
    assert request_id.get() == value
    return seen


def read_and_set_sync(token: str, value: str) -> str:
    seen = request_id.get()
    request_id.set(value)
    return seen


async def who_async(token: str) -> list[Any]:
    me = harnpool.current_task()
    return [me.id, me.key, me.attempt, me.pool]


def who_sync(token: str) -> list[Any]:
    me = harnpool.current_task()
    return [me.id, me.key, me.attempt, me.pool]


async def who_in_child(token: str) -> str:
    """current_task() from an anyio task the task started inherits the task's context."""
    found: list[str] = []

    async def child() -> None:
        found.append(harnpool.current_task().id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(child)
    return found[0]


async def flaky_who(token: str) -> int:
    attempt = harnpool.current_task().attempt
    if attempt < 3:
        raise ValueError("not yet")
    return attempt


async def logs_inside(token: str) -> None:
    structlog.get_logger("app").info("app.inside", token=token)


def logs_inside_sync(token: str) -> None:
    structlog.get_logger("app").info("app.inside_sync", token=token)


async def gated(token: str, n: int) -> int:
    await _state[f"{token}gate{n}"].wait()
    return n


async def gated_fails(token: str, n: int) -> int:
    await _state[f"{token}gate{n}"].wait()
    raise ValueError(f"task {n} failed")


async def double(n: int) -> int:
    return 2 * n


async def boom(n: int) -> int:
    raise ValueError(f"boom {n}")


def _gates(token: str, *numbers: int) -> list[anyio.Event]:
    gates = [anyio.Event() for _ in numbers]
    for n, gate in zip(numbers, gates, strict=True):
        _state[f"{token}gate{n}"] = gate
    return gates


class TestContext:
    async def test_a_task_sees_its_submitters_variables(self, open_on: OpenOn, token: str) -> None:
        only_exclusive(open_on, "a context cannot travel to the process that runs the task")
        async with open_on() as pool:
            request_id.set("submitted")
            ids = [
                await pool.submit(read_and_set, token, "async"),
                await pool.submit(read_and_set_sync, token, "sync"),
            ]
            request_id.set("changed after submit")
            assert await pool.results(ids) == ["submitted", "submitted"]

    async def test_on_postgresql_a_task_runs_in_a_clean_context(
        self, open_on: OpenOn, token: str
    ) -> None:
        async with open_on() as pool:
            if not hasattr(pool, "_watchers"):
                pytest.skip("only a pool on PostgreSQL runs tasks in clean contexts")
            request_id.set("submitted")
            ids = [
                await pool.submit(read_and_set, token, "async"),
                await pool.submit(read_and_set_sync, token, "sync"),
            ]
            assert await pool.results(ids) == ["unset", "unset"]

    async def test_what_a_task_sets_reaches_neither_the_next_task_nor_the_submitter(
        self, open_on: OpenOn, token: str
    ) -> None:
        async with open_on(max_concurrent=1) as pool:
            # One worker slot runs them one after another.
            first = await pool.submit(read_and_set, token, "first")
            second = await pool.submit(read_and_set, token, "second")
            third = await pool.submit(read_and_set_sync, token, "third")
            fourth = await pool.submit(read_and_set_sync, token, "fourth")
            seen = await pool.results([first, second, third, fourth])
            assert not {"first", "second", "third"} & set(seen)
            assert request_id.get() == "unset"

    async def test_current_task_in_async_and_sync_tasks(self, open_on: OpenOn, token: str) -> None:
        async with open_on(max_concurrent=2) as pool:
            a = await pool.submit(who_async, token, key=f"{token}-a")
            s = await pool.submit(who_sync, token)
            child = await pool.submit(who_in_child, token)
            assert await pool.results([a, s, child]) == [
                [a, f"{token}-a", 1, pool.path],
                [s, None, 1, pool.path],
                child,
            ]

    async def test_current_task_counts_attempts(self, open_on: OpenOn, token: str) -> None:
        async with open_on(retries=2, retry_backoff=0.01, retry_backoff_max=0.01) as pool:
            assert await pool.wait(await pool.submit(flaky_who, token)) == 3

    async def test_current_task_outside_a_task_raises(self, open_on: OpenOn) -> None:
        async with open_on():
            with pytest.raises(harnpool.NotInTaskError, match="outside a task"):
                harnpool.current_task()

    async def test_current_task_is_frozen(self, open_on: OpenOn, token: str) -> None:
        current = harnpool.CurrentTask(id="t1", key=None, attempt=1, pool="p")
        with pytest.raises(AttributeError):
            current.id = "t2"  # type: ignore[misc]

    async def test_log_lines_in_a_task_carry_its_id_and_key(
        self, open_on: OpenOn, token: str
    ) -> None:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            async with open_on(max_concurrent=2) as pool:
                a = await pool.submit(logs_inside, token, key=f"{token}-k")
                s = await pool.submit(logs_inside_sync, token)
                await pool.results([a, s])
            structlog.get_logger("app").info("app.outside")
        inside = {e["event"]: e for e in logs if e.get("token") == token}
        assert inside["app.inside"]["task_id"] == a
        assert inside["app.inside"]["key"] == f"{token}-k"
        assert inside["app.inside_sync"]["task_id"] == s
        assert inside["app.inside_sync"]["key"] is None
        # The pool's own events name the same task the same way.
        submitted = [e for e in logs if e["event"] == "task.submitted" and e["task_id"] == a]
        assert len(submitted) == 1
        assert submitted[0]["key"] == f"{token}-k"
        outside = [e for e in logs if e["event"] == "app.outside"]
        assert len(outside) == 1
        assert "task_id" not in outside[0]


class TestAsCompleted:
    async def test_ids_come_in_the_order_tasks_finish(self, open_on: OpenOn, token: str) -> None:
        async with open_on(max_concurrent=3) as pool:
            gates = _gates(token, 0, 1, 2)
            ids = await pool.submit_many(Job(gated, token, n) for n in range(3))
            order = [2, 0, 1]
            seen = []
            gates[order[0]].set()
            with anyio.fail_after(10):
                async for task_id in pool.as_completed(ids):
                    seen.append(task_id)
                    if len(seen) < 3:
                        gates[order[len(seen)]].set()
            assert seen == [ids[n] for n in order]
            assert _registrations(pool) == 0

    async def test_failed_and_cancelled_tasks_are_yielded_too(
        self, open_on: OpenOn, token: str
    ) -> None:
        async with open_on(max_concurrent=2) as pool:
            (gate,) = _gates(token, 0)
            failing = await pool.submit(boom, 1)
            held = await pool.submit(gated, token, 0)
            done = await pool.submit(double, 2)
            cancelled = False
            seen = set()
            with anyio.fail_after(10):
                async for task_id in pool.as_completed([failing, held, done]):
                    seen.add(task_id)
                    if not cancelled and {failing, done} <= seen:
                        cancelled = await pool.cancel(held)
            assert seen == {failing, held, done}
            assert cancelled
            gate.set()
            with pytest.raises(harnpool.TaskFailed):
                await pool.wait(failing)
            with pytest.raises(harnpool.TaskCancelled):
                await pool.wait(held)

    async def test_a_repeated_id_is_yielded_once(self, open_on: OpenOn) -> None:
        async with open_on() as pool:
            a = await pool.submit(double, 1)
            b = await pool.submit(double, 2)
            with anyio.fail_after(10):
                seen = [task_id async for task_id in pool.as_completed([a, b, a, a])]
            assert sorted(seen) == sorted([a, b])

    async def test_finished_tasks_come_first_in_the_order_given(self, open_on: OpenOn) -> None:
        async with open_on() as pool:
            ids = await pool.submit_many(Job(double, n) for n in range(4))
            await pool.results(ids)
            wanted = [ids[2], ids[0], ids[3], ids[1]]
            assert [task_id async for task_id in pool.as_completed(wanted)] == wanted

    async def test_no_ids_yield_nothing(self, open_on: OpenOn) -> None:
        async with open_on() as pool:
            assert [task_id async for task_id in pool.as_completed([])] == []
            assert await pool.results(iter([])) == []

    async def test_an_unknown_id_raises_what_wait_raises(self, open_on: OpenOn) -> None:
        async with open_on() as pool:
            known = await pool.submit(double, 1)
            with pytest.raises(harnpool.UnknownTaskError) as caught:
                async for _ in pool.as_completed([known, "t999999"]):
                    pass
            assert caught.value.task_id == "t999999"
            with pytest.raises(harnpool.UnknownTaskError):
                await pool.results(["t999999"])
            assert _registrations(pool) == 0

    async def test_the_timeout_bounds_the_whole_iteration(
        self, open_on: OpenOn, token: str
    ) -> None:
        async with open_on(max_concurrent=2) as pool:
            gates = _gates(token, 0, 1)
            fast = await pool.submit(double, 1)
            slow = await pool.submit_many(Job(gated, token, n) for n in range(2))
            seen = []
            iterator = pool.as_completed([*slow, fast], timeout=0.2)
            with anyio.fail_after(10), pytest.raises(harnpool.WaitTimeout) as caught:
                async for task_id in iterator:
                    seen.append(task_id)
            assert seen == [fast]
            assert caught.value.task_id == slow[0]
            assert caught.value.unfinished == 2
            assert isinstance(caught.value, TimeoutError)
            assert _registrations(pool) == 0
            # The iteration is over; the tasks go on.
            assert [task_id async for task_id in iterator] == []
            for gate in gates:
                gate.set()
            assert await pool.results(slow) == [0, 1]

    async def test_breaking_out_early_leaves_no_registration(
        self, open_on: OpenOn, token: str
    ) -> None:
        async with open_on(max_concurrent=3) as pool:
            gates = _gates(token, 0, 1)
            fast = await pool.submit(double, 1)
            slow = await pool.submit_many(Job(gated, token, n) for n in range(2))
            with anyio.fail_after(10):
                async for task_id in pool.as_completed([fast, *slow]):
                    assert task_id == fast
                    assert _registrations(pool) == 2
                    break
            assert _registrations(pool) == 0
            for gate in gates:
                gate.set()
            assert await pool.results(slow) == [0, 1]

    async def test_aclose_leaves_no_registration(self, open_on: OpenOn, token: str) -> None:
        async with open_on() as pool:
            (gate,) = _gates(token, 0)
            held = await pool.submit(gated, token, 0)
            iterator = pool.as_completed([held], timeout=0.05)
            with pytest.raises(harnpool.WaitTimeout):
                await iterator.__anext__()
            iterator = pool.as_completed([held])
            with anyio.move_on_after(0.05):
                await iterator.__anext__()
            await iterator.aclose()
            assert _registrations(pool) == 0
            gate.set()

    async def test_a_step_cancelled_from_outside_loses_nothing(
        self, open_on: OpenOn, token: str
    ) -> None:
        async with open_on(max_concurrent=2) as pool:
            gates = _gates(token, 0, 1)
            ids = await pool.submit_many(Job(gated, token, n) for n in range(2))
            iterator = pool.as_completed(ids)
            with anyio.move_on_after(0.05) as scope:
                await iterator.__anext__()  # nothing has finished yet
            assert scope.cancelled_caught
            gates[1].set()
            with anyio.fail_after(10):
                assert await iterator.__anext__() == ids[1]
                with anyio.move_on_after(0.05):
                    await iterator.__anext__()
                gates[0].set()
                assert await iterator.__anext__() == ids[0]
                with pytest.raises(StopAsyncIteration):
                    await iterator.__anext__()
            assert _registrations(pool) == 0

    @pytest.mark.parametrize("ids", ["t1", b"t1", 5, None, ["t1", 2]])
    async def test_ids_must_be_an_iterable_of_str(self, open_on: OpenOn, ids: object) -> None:
        async with open_on() as pool:
            with pytest.raises(TypeError, match="ids"):
                pool.as_completed(ids)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="ids"):
                await pool.results(ids)  # type: ignore[arg-type]
            assert pool.statistics().queued == 0

    async def test_timeout_is_checked(self, open_on: OpenOn) -> None:
        async with open_on() as pool:
            with pytest.raises(ValueError, match="timeout"):
                pool.as_completed([], timeout=-1)
            with pytest.raises(TypeError, match="timeout"):
                await pool.results([], timeout="1")  # type: ignore[arg-type]


class TestResults:
    async def test_results_come_in_the_order_given(self, open_on: OpenOn, token: str) -> None:
        async with open_on(max_concurrent=3) as pool:
            gates = _gates(token, 0, 1, 2)
            ids = await pool.submit_many(Job(gated, token, n) for n in range(3))
            for gate in reversed(gates):
                gate.set()
            with anyio.fail_after(10):
                assert await pool.results([ids[1], *ids, ids[1]]) == [1, 0, 1, 2, 1]

    async def test_the_first_failure_in_the_order_given_is_raised_once_all_finished(
        self, open_on: OpenOn, token: str
    ) -> None:
        async with open_on(max_concurrent=3) as pool:
            gates = _gates(token, 0, 1, 2)
            ok = await pool.submit(gated, token, 0)
            first_failure = await pool.submit(gated_fails, token, 1)
            second_failure = await pool.submit(gated_fails, token, 2)
            gates[2].set()  # the later one in the list fails first
            gates[1].set()
            gates[0].set()
            with anyio.fail_after(10), pytest.raises(harnpool.TaskFailed) as caught:
                await pool.results([ok, first_failure, second_failure])
            assert caught.value.task_id == first_failure
            assert pool.info(ok).status is harnpool.Status.COMPLETED

    async def test_results_time_out(self, open_on: OpenOn, token: str) -> None:
        async with open_on() as pool:
            (gate,) = _gates(token, 0)
            held = await pool.submit(gated, token, 0)
            with anyio.fail_after(10), pytest.raises(harnpool.WaitTimeout) as caught:
                await pool.results([held], timeout=0.05)
            assert caught.value.task_id == held
            assert _registrations(pool) == 0
            gate.set()
            assert await pool.results([held]) == [0]
