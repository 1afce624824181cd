"""A pool shared through PostgreSQL: several pools on one name, in one process.

Each ``open_pool`` on the same database and name stands for another process:
it has its own owner, connections, listener and workers. What two real
processes do is the same, through the database alone.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from structlog.testing import capture_logs

import harnpool
from harnpool import Job, Status

psycopg = pytest.importorskip("psycopg")

from harnpool._pg import PostgresStore  # noqa: E402
from harnpool._records import TaskRecord  # noqa: E402
from harnpool._shared import SharedPool  # noqa: E402
from tests.task_state import state as _state  # noqa: E402


def event(token: str, name: str) -> anyio.Event:
    made = _state[token + name] = anyio.Event()
    return made


async def double(n: int) -> int:
    return n * 2


def pair(n: int) -> tuple[int, str]:
    return n, str(n)


async def held(token: str, value: str) -> str:
    _state[token + "started"].set()
    await _state[token + "gate"].wait()
    return value


async def noted(token: str, value: str) -> str:
    """Like ``held``, and notes when its attempt is cancelled."""
    _state[token + "started"].set()
    try:
        await _state[token + "gate"].wait()
    except anyio.get_cancelled_exc_class():
        _state[token + "cancelled"].set()
        raise
    return value


async def stuck(token: str) -> None:
    _state[token + "started"].set()
    await anyio.sleep_forever()


async def second_run_returns(token: str) -> str:
    runs = _state.setdefault(token + "runs", [])
    runs.append(1)
    if len(runs) == 1:
        _state[token + "started"].set()
        await anyio.sleep_forever()
    return "second run"


async def tracked(token: str) -> None:
    now = _state[token + "now"] = _state.get(token + "now", 0) + 1
    _state[token + "most"] = max(now, _state.get(token + "most", 0))
    try:
        await anyio.sleep(0.02)  # so that tasks overlap when nothing stops them
    finally:
        _state[token + "now"] -= 1


@harnpool.task(name="tests.pg.registered")
async def registered(n: int) -> int:
    return n + 1


@harnpool.task(name="tests.pg.scaled")
def scaled(n: int, *, factor: int, offset: tuple[int, int] = (0, 0)) -> str:
    return f"{n * factor} {offset!r}"


def shifted(n: int, *, by: int) -> int:
    return n + by


class Holder:
    async def method(self) -> None:
        pass


@pytest.fixture
def open_shared(postgres_url: str, pool_name: str) -> Any:
    """``open_pool`` on this test's pool: each call stands for one more process."""
    return functools.partial(harnpool.open_pool, postgres_url, name=pool_name)


def _run(dsn: str, query: str, params: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query, params)


@contextlib.contextmanager
def _poisoned(dsn: str, pool: str) -> Iterator[None]:
    """Make every COMMIT that inserted the key ``poison`` in ``pool`` fail, for the block.

    A deferred constraint trigger runs at COMMIT, after every statement of the
    transaction succeeded.
    """
    name = f"harnpool_test_poison_{uuid.uuid4().hex[:12]}"
    _run(
        dsn,
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.pool = '{pool}' AND NEW.key = 'poison' THEN"
        " RAISE EXCEPTION 'poisoned commit'; END IF; RETURN NULL; END $$",
        (),
    )
    _run(
        dsn,
        f"CREATE CONSTRAINT TRIGGER {name} AFTER INSERT ON harnpool_task"
        f" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}()",
        (),
    )
    try:
        yield
    finally:
        _run(dsn, f"DROP TRIGGER {name} ON harnpool_task", ())
        _run(dsn, f"DROP FUNCTION {name}()", ())


@contextlib.asynccontextmanager
async def _writer_held(pool: Any, dsn: str, name: str) -> AsyncIterator[None]:
    """Keep ``pool``'s writer inside one group for the block.

    Another connection holds an uncommitted row with the key ``held``, and
    the pool submits that key: its group waits for the row until the block
    ends. Whatever is queued meanwhile goes into the writer's next group.
    """
    with psycopg.connect(dsn) as blocker:
        blocker.execute(
            "INSERT INTO harnpool_task (pool, key, status, submitted_at)"
            " VALUES (%s, 'held', 'queued', now())",
            (name,),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(pool.submit, double, 0, key="held"))
            await anyio.wait_all_tasks_blocked()
            assert pool._writer._writing is not None  # waiting for the row
            try:
                yield
            finally:
                blocker.rollback()


class TestSharing:
    async def test_a_client_submits_and_another_pool_runs_it(self, open_shared: Any) -> None:
        with anyio.fail_after(20):
            async with open_shared(workers=0) as client:
                assert isinstance(client, harnpool.Pool)
                task_id = await client.submit(double, 21)
                assert client.info(task_id).status is Status.QUEUED
                async with open_shared(max_concurrent=2) as worker:
                    assert await client.wait(task_id) == 42
                    assert await worker.wait(task_id) == 42
                assert client.statistics().completed == 1

    async def test_a_client_alone_runs_nothing_and_leaves_at_once(self, open_shared: Any) -> None:
        with anyio.fail_after(20):
            async with open_shared(workers=0) as client:
                task_id = await client.submit(double, 1)
            async with open_shared(workers=0) as client:
                assert client.info(task_id).status is Status.QUEUED
                assert client.statistics().workers == 0

    async def test_a_result_is_typed_by_the_function_wherever_it_ran(
        self, open_shared: Any
    ) -> None:
        with anyio.fail_after(20):
            async with open_shared(workers=0) as client, open_shared() as worker:
                plain = await client.submit(pair, 3)
                named = await client.submit(registered, 1)
                assert await client.wait(plain) == (3, "3")
                assert await worker.wait(named) == 2
                assert client.info(named).name == "tests.pg.registered"
                assert client.info(plain).name == f"{__name__}:pair"

    async def test_the_limit_holds_across_pools(self, open_shared: Any, token: str) -> None:
        with anyio.fail_after(30):
            async with (
                open_shared(max_concurrent=2, workers=4) as one,
                open_shared(max_concurrent=2, workers=4) as two,
            ):
                ids = await one.submit_many(Job(tracked, token) for _ in range(16))
                for task_id in ids:
                    await two.wait(task_id)
        assert _state[token + "most"] == 2

    async def test_a_key_runs_once_across_pools(self, open_shared: Any) -> None:
        with anyio.fail_after(20):
            async with open_shared(workers=0) as one, open_shared(workers=0) as two:
                first = await one.submit(double, 1, key="k")
                assert await two.submit(double, 2, key="k") == first
                ids = await two.submit_many([Job(double, 3, key="k"), Job(double, 4, key="j")])
                assert ids[0] == first
                assert ids[1] != first
                assert one.statistics().queued == 2

    def test_a_blocking_pool_shares_it_too(self, postgres_url: str, pool_name: str) -> None:
        with (
            harnpool.open_blocking_pool(postgres_url, name=pool_name, workers=0) as client,
            harnpool.open_blocking_pool(postgres_url, name=pool_name, backend="trio") as worker,
        ):
            task_id = client.submit(pair, 5)
            assert worker.wait(task_id, timeout=20) == (5, "5")
            assert client.statistics().completed == 1


class TestLeases:
    async def test_an_abandoned_task_is_reclaimed_once_its_lease_expires(
        self, open_shared: Any, token: str
    ) -> None:
        started = event(token, "started")
        with anyio.fail_after(20):
            with pytest.raises(RuntimeError, match="leaving"):
                async with open_shared(lease=1) as gone:
                    task_id = await gone.submit(second_run_returns, token)
                    await started.wait()
                    raise RuntimeError("leaving")
            with capture_logs() as logs:
                async with open_shared(lease=1) as pool:
                    assert await pool.wait(task_id) == "second run"
                    info = pool.info(task_id)
        assert (info.attempts, info.recoveries) == (2, 1)
        assert any(e["event"] == "task.recovered" and e["task_id"] == task_id for e in logs)

    async def test_a_stale_owners_result_is_discarded(
        self, open_shared: Any, postgres_dsn: str, pool_name: str, token: str
    ) -> None:
        started, gate = event(token, "started"), event(token, "gate")
        with anyio.fail_after(20), capture_logs() as logs:
            async with open_shared() as pool:
                task_id = await pool.submit(held, token, "stale")
                await started.wait()
                # Another process reclaims the lease and records its own result.
                _run(
                    postgres_dsn,
                    "UPDATE harnpool_task SET lease_until = now() - interval '1 second'"
                    " WHERE pool = %s AND status = 'running'",
                    (pool_name,),
                )
                with PostgresStore.connect(postgres_dsn, pool_name) as thief:
                    claimed = thief.claim("thief", limit=1, lease=30, max_concurrent=1)
                    (record,) = claimed.started
                    thief.finish(
                        TaskRecord(
                            id=record.id,
                            seq=record.seq,
                            status=Status.COMPLETED,
                            submitted_at=0.0,
                            attempts=record.attempts,
                            result=msgspec.Raw(b'"thief"'),
                        ),
                        owner="thief",
                    )
                gate.set()
                assert await pool.wait(task_id) == "thief"
        assert any(e["event"] == "task.lease_lost" and e["task_id"] == task_id for e in logs)

    async def test_an_owner_stops_a_task_another_took_over(
        self, open_shared: Any, postgres_dsn: str, pool_name: str, token: str
    ) -> None:
        started, cancelled = event(token, "started"), event(token, "cancelled")
        event(token, "gate")
        with anyio.fail_after(20), capture_logs() as logs:
            async with open_shared(lease=0.6) as pool:
                task_id = await pool.submit(noted, token, "mine")
                await started.wait()
                # What a claim of another process does once the lease expired, in one statement.
                _run(
                    postgres_dsn,
                    "UPDATE harnpool_task SET owner = 'thief', attempts = attempts + 1,"
                    " recoveries = recoveries + 1, lease_until = now() + interval '30 seconds'"
                    " WHERE pool = %s AND status = 'running'",
                    (pool_name,),
                )
                await cancelled.wait()  # the renewal found the task gone
                with PostgresStore.connect(postgres_dsn, pool_name) as thief:
                    record = thief.get(task_id)
                    finished = thief.finish(
                        msgspec.structs.replace(
                            record, status=Status.COMPLETED, result=msgspec.Raw(b'"thief"')
                        ),
                        owner="thief",
                    )
                assert finished is not None
                assert await pool.wait(task_id) == "thief"
        assert any(e["event"] == "task.lease_lost" and e["task_id"] == task_id for e in logs)

    async def test_an_owner_that_cannot_renew_stops_its_tasks(
        self, open_shared: Any, token: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        started, cancelled = event(token, "started"), event(token, "cancelled")
        gate = event(token, "gate")

        def unreachable(owner: str, *, lease: float) -> None:
            raise harnpool.DatabaseError("the database is gone", pool="p")

        with anyio.fail_after(20):
            async with open_shared(lease=0.6) as pool:
                monkeypatch.setattr(pool._store, "renew", unreachable)
                task_id = await pool.submit(noted, token, "second run")
                await started.wait()
                await cancelled.wait()  # no renewal for a whole lease
                monkeypatch.undo()
                gate.set()
                # Its lease expired: the next claim takes it again, as a recovery.
                assert await pool.wait(task_id) == "second run"
                info = pool.info(task_id)
        assert (info.attempts, info.recoveries) == (2, 1)


class TestCancel:
    async def test_a_task_running_in_another_pool_is_cancelled(
        self, open_shared: Any, token: str
    ) -> None:
        started = event(token, "started")
        with anyio.fail_after(20):
            async with open_shared(workers=0) as client, open_shared() as worker:
                task_id = await client.submit(stuck, token)
                await started.wait()
                assert await client.cancel(task_id)
                with pytest.raises(harnpool.TaskCancelled):
                    await worker.wait(task_id)
                assert client.info(task_id).status is Status.CANCELLED
                assert not await client.cancel(task_id)

    async def test_a_cancel_here_reaches_a_claimed_task_not_started_yet(
        self, open_shared: Any, token: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        started = event(token, "started")
        claimed = SharedPool._claimed
        held_back: list[tuple[SharedPool, Any]] = []
        claim_made = anyio.Event()

        def hold_back(pool: SharedPool, claim: Any) -> None:
            if claim.started and not held_back:
                held_back.append((pool, claim))  # committed, not started yet
                claim_made.set()
                return
            claimed(pool, claim)

        monkeypatch.setattr(SharedPool, "_claimed", hold_back)
        with anyio.fail_after(20):
            async with open_shared(lease=60) as pool, anyio.create_task_group() as tg:
                finished = pool._finished
                waiting = anyio.Event()

                async def noticed(task_id: str) -> Any:
                    waiting.set()
                    return await finished(task_id)

                monkeypatch.setattr(pool, "_finished", noticed)
                task_id = await pool.submit(stuck, token)
                await claim_made.wait()
                outcome: list[bool] = []
                answered = anyio.Event()

                async def cancel() -> None:
                    outcome.append(await pool.cancel(task_id))
                    answered.set()

                tg.start_soon(cancel)
                await waiting.wait()  # the request committed and cancel() waits
                claimed(*held_back[0])
                # Long before the next renewal, a third of the lease (20 s) away.
                with anyio.fail_after(5):
                    await answered.wait()
            assert outcome == [True]
            assert not started.is_set()


class TestPartials:
    async def test_a_partial_is_stored_with_its_keywords_and_runs_in_another_pool(
        self, open_shared: Any, postgres_dsn: str, pool_name: str
    ) -> None:
        with anyio.fail_after(20):
            async with open_shared(workers=0) as client:
                registered_id = await client.submit(
                    functools.partial(scaled, factor=3, offset=(1, 2)), 5
                )
                importable_id = await client.submit(functools.partial(shifted, 1, by=10))
                async with open_shared() as worker:
                    # Decoded by the annotations: the tuple comes back a tuple.
                    assert await client.wait(registered_id) == "15 (1, 2)"
                    assert await worker.wait(importable_id) == 11
        store = PostgresStore(postgres_dsn, pool_name, connections=1)
        try:
            record = store.get(registered_id)
        finally:
            store.close()
        assert record.name == "tests.pg.scaled"
        assert isinstance(record.args, msgspec.Raw)
        assert msgspec.json.decode(record.args) == {
            "args": [5],
            "kwargs": {"factor": 3, "offset": [1, 2]},
        }

    async def test_keywords_that_cannot_be_stored_are_refused(self, open_shared: Any) -> None:
        unstorable: Any = object()
        async with open_shared(workers=0) as pool:
            with pytest.raises(harnpool.ArgumentsNotEncodableError, match="object"):
                await pool.submit(functools.partial(scaled, factor=unstorable), 1)
            assert pool.statistics().queued == 0


class TestRefusals:
    async def test_functions_no_other_process_can_find_are_refused(self, open_shared: Any) -> None:
        async def closure() -> None:
            pass

        refused: list[Any] = [
            lambda: None,
            closure,
            Holder().method,
            functools.partial(lambda n: n, 1),
            functools.partial(closure),
        ]
        async with open_shared(workers=0) as pool:
            for fn in refused:
                with pytest.raises(TypeError, match="another process must find the function"):
                    await pool.submit(fn)
            assert pool.statistics().queued == 0

    @pytest.mark.parametrize(
        ("setting", "value"),
        [
            ("strategy", "fifo"),
            ("max_queued", 5),
            ("on_full", "reject"),
            ("aging", 1.0),
            ("start", "eager"),
        ],
    )
    async def test_settings_it_cannot_honour_are_refused_before_opening(
        self, setting: str, value: object
    ) -> None:
        unreachable = "postgresql://nobody@/none?host=/nonexistent-harnpool"
        options: dict[str, Any] = {setting: value}
        with pytest.raises(ValueError, match=setting):
            async with harnpool.open_pool(unreachable, **options):
                pass  # pragma: no cover - never opened

    @pytest.mark.parametrize(
        ("setting", "value", "error"),
        [
            ("name", "p", ValueError),
            ("workers", 1, ValueError),
            ("lease", 5.0, ValueError),
            ("name", 3, TypeError),
            ("workers", True, TypeError),
            ("lease", "5", TypeError),
        ],
    )
    async def test_shared_settings_with_a_journal_are_refused(
        self, tmp_path: Path, setting: str, value: object, error: type[Exception]
    ) -> None:
        path = tmp_path / "pool.jsonl"
        options: dict[str, Any] = {setting: value}
        with pytest.raises(error, match=setting):
            async with harnpool.open_pool(path, **options):
                pass  # pragma: no cover - never opened
        assert not path.exists()

    @pytest.mark.parametrize(
        ("setting", "value", "error"),
        [
            ("name", "", ValueError),
            ("workers", -1, ValueError),
            ("lease", 0, ValueError),
            ("lease", float("nan"), ValueError),
        ],
    )
    async def test_shared_settings_out_of_range_are_refused(
        self, setting: str, value: object, error: type[Exception]
    ) -> None:
        unreachable = "postgresql://nobody@/none?host=/nonexistent-harnpool"
        options: dict[str, Any] = {setting: value}
        with pytest.raises(error, match=setting):
            async with harnpool.open_pool(unreachable, **options):
                pass  # pragma: no cover - never opened

    async def test_an_unreachable_database_is_a_database_error(self) -> None:
        with pytest.raises(harnpool.DatabaseError):
            async with harnpool.open_pool("postgresql://nobody@/none?host=/nonexistent-harnpool"):
                pass  # pragma: no cover - never opened


async def failing(n: int) -> int:
    raise ValueError(f"failed {n}")


class TestResultsFromElsewhere:
    async def test_a_client_sees_tasks_another_pool_runs_as_they_finish(
        self, open_shared: Any, token: str
    ) -> None:
        with anyio.fail_after(30):
            async with open_shared(workers=0) as client:
                event(token, "started")
                gate = event(token, "gate")
                slow = await client.submit(held, token, "slow")
                fast = await client.submit(double, 4)
                bad = await client.submit(failing, 1)
                async with open_shared(max_concurrent=3) as worker:
                    seen = []
                    async for task_id in client.as_completed([slow, fast, bad]):
                        seen.append(task_id)
                        if len(seen) == 2:
                            gate.set()
                    assert seen[2] == slow
                    assert set(seen[:2]) == {fast, bad}
                    assert client._watchers == {}
                    assert await client.results([slow, fast]) == ["slow", 8]
                    with pytest.raises(harnpool.TaskFailed) as caught:
                        await client.results([fast, bad, slow])
                    assert caught.value.task_id == bad
                    assert await worker.results([fast]) == [8]

    async def test_a_lost_notification_is_made_up_for_by_the_poll(
        self, open_shared: Any, token: str
    ) -> None:
        with anyio.fail_after(30):
            async with open_shared(workers=0) as client:
                listener = client._listener
                heard = listener.wait

                def deaf(timeout: float) -> list[str]:
                    return [p for p in heard(timeout) if not p.startswith("finished")]

                listener.wait = deaf  # every "finished" notification is lost
                started = event(token, "started")
                gate = event(token, "gate")
                task_id = await client.submit(held, token, "late")
                iterator = client.as_completed([task_id])
                with anyio.move_on_after(0.2):
                    await iterator.__anext__()  # registered; nothing runs the task yet
                async with open_shared() as worker:
                    await started.wait()
                    gate.set()
                    assert await worker.wait(task_id) == "late"
                    assert await iterator.__anext__() == task_id


class TestGroupCommit:
    async def test_concurrent_submits_share_one_transaction_and_their_keys(
        self, open_shared: Any, postgres_dsn: str, pool_name: str
    ) -> None:
        n = 20
        ids: dict[int, str] = {}

        async def submit(i: int) -> None:
            ids[i] = await client.submit(double, i, key=f"k{i % 2}")

        with anyio.fail_after(20):
            async with open_shared(workers=0) as client:
                store: PostgresStore = client._store
                before = store.groups
                async with (
                    anyio.create_task_group() as tg,
                    _writer_held(client, postgres_dsn, pool_name),
                ):
                    for i in range(n):
                        tg.start_soon(submit, i)
                    await anyio.wait_all_tasks_blocked()
                    assert len(client._writer._pending) == n
                # The held group, then one transaction for every submit queued meanwhile.
                assert store.groups - before == 2
                assert {ids[i] for i in range(0, n, 2)} == {ids[0]}
                assert {ids[i] for i in range(1, n, 2)} == {ids[1]}
                assert ids[0] != ids[1]
                assert client.statistics().queued == 3

    async def test_a_failed_commit_fails_every_caller_of_its_group(
        self, open_shared: Any, postgres_dsn: str, pool_name: str
    ) -> None:
        errors: list[BaseException] = []
        ids: list[str] = []

        async def submit(key: str) -> None:
            try:
                ids.append(await client.submit(double, 1, key=key))
            except harnpool.DatabaseError as exc:
                errors.append(exc)

        with anyio.fail_after(20):
            async with open_shared(workers=0) as client:
                with _poisoned(postgres_dsn, pool_name):
                    async with (
                        anyio.create_task_group() as tg,
                        _writer_held(client, postgres_dsn, pool_name),
                    ):
                        for key in ("a", "poison", "b"):
                            tg.start_soon(submit, key)
                        await anyio.wait_all_tasks_blocked()
                        assert len(client._writer._pending) == 3
                assert ids == []
                assert [type(e) for e in errors] == [harnpool.DatabaseError] * 3
                assert len({id(e) for e in errors}) == 3
                assert client.statistics().queued == 1  # the held group's task
                # The writer goes on with the next group.
                assert await client.submit(double, 1, key="a")

    async def test_a_group_whose_bookkeeping_fails_still_tells_its_callers(
        self, open_shared: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async with open_shared(workers=0) as client:
            store: PostgresStore = client._store
            write = store.write

            def short(**kwargs: Any) -> Any:
                # Committed, but it hands back too few results for the group's callers.
                return msgspec.structs.replace(write(**kwargs), submitted=[])

            with anyio.fail_after(20):
                monkeypatch.setattr(store, "write", short)
                with pytest.raises(harnpool.DatabaseError) as caught:
                    await client.submit(double, 1, key="a")
                assert caught.value.pool == client.path
                group_error = caught.value.__cause__
                assert isinstance(group_error, harnpool.DatabaseError)
                assert "committed" in str(group_error)
                assert isinstance(group_error.__cause__, StopIteration)
                monkeypatch.setattr(store, "write", write)
                # The writer goes on, and the pool closes cleanly.
                assert await client.submit(double, 1, key="b")

    async def test_a_claim_whose_bookkeeping_fails_is_an_error_not_a_crash(
        self, open_shared: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        claimed = SharedPool._claimed
        failed = anyio.Event()

        def broken(pool: SharedPool, claim: Any) -> None:
            if claim.started and not failed.is_set():
                # As when the pool's task group can no longer start the claimed tasks.
                failed.set()
                raise RuntimeError("cannot start the claimed tasks")
            claimed(pool, claim)

        with anyio.fail_after(20):
            async with open_shared(workers=0) as client:
                task_id = await client.submit(double, 21)
                monkeypatch.setattr(SharedPool, "_claimed", broken)
                with capture_logs() as logs:
                    async with open_shared(lease=0.6):
                        await failed.wait()
                        # The claimed task's lease lapses and it is claimed again.
                        assert await client.wait(task_id) == 42
                assert any(e["event"] == "pool.claim_failed" for e in logs)

    async def test_a_bug_in_the_store_is_a_database_error_for_each_caller(
        self, open_shared: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async with open_shared(workers=0) as client:
            store: PostgresStore = client._store
            write = store.write

            def buggy(**kwargs: Any) -> Any:
                raise ValueError("a bug")

            with anyio.fail_after(20):
                monkeypatch.setattr(store, "write", buggy)
                with pytest.raises(harnpool.DatabaseError) as caught:
                    await client.submit(double, 1)
                assert caught.value.pool == client.path
                assert isinstance(caught.value.__cause__, harnpool.DatabaseError)
                assert isinstance(caught.value.__cause__.__cause__, ValueError)
                monkeypatch.setattr(store, "write", write)
                assert await client.submit(double, 1)

    async def test_a_bug_writing_an_outcome_does_not_take_the_pool_down(
        self, open_shared: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with anyio.fail_after(20):
            async with open_shared(lease=0.6) as pool:
                store: PostgresStore = pool._store
                write = store.write
                failed: list[BaseException] = []  # the store is called in worker threads

                def buggy(**kwargs: Any) -> Any:
                    if kwargs.get("outcomes") and not failed:
                        failed.append(TypeError("a bug"))
                        raise failed[0]
                    return write(**kwargs)

                monkeypatch.setattr(store, "write", buggy)
                task_id = await pool.submit(double, 21)
                # Written again by the retry of a failed group.
                assert await pool.wait(task_id) == 42
                assert failed


class TestDelays:
    async def test_a_delay_is_counted_on_the_database_clock(
        self, open_shared: Any, postgres_dsn: str, pool_name: str
    ) -> None:
        with anyio.fail_after(20):
            async with open_shared(workers=0) as client:
                task_id = await client.submit(double, 1, delay=1000)
                with psycopg.connect(postgres_dsn) as conn:
                    # Both stamped by the inserting statement, whatever the client's clock.
                    row = conn.execute(
                        "SELECT not_before - submitted_at = make_interval(secs => 1000)"
                        " FROM harnpool_task WHERE pool = %s AND seq = %s",
                        (pool_name, int(task_id.removeprefix("t"))),
                    ).fetchone()
                assert row == (True,)
