"""The PostgreSQL store's SQL, against a throwaway server (see tests/postgres_server.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

psycopg = pytest.importorskip("psycopg")

from harnpool import DatabaseError, PoolClosedError, SchemaVersionError, UnknownTaskError  # noqa: E402
from harnpool._pg import (  # noqa: E402
    RECONNECTED,
    SCHEMA_VERSION,
    Claim,
    ClaimRequest,
    PostgresStore,
)
from harnpool._pg._store import _CLAIM, _FINISH, _PRUNE  # noqa: E402
from harnpool._records import Status, TaskRecord  # noqa: E402

CLAIMER = Path(__file__).with_name("_pg_claimer.py")


def new(key: str | None = None, priority: int = 0, **fields: Any) -> TaskRecord:
    """A task as the pool hands it to submit: id and seq are filled in by the store."""
    return TaskRecord(
        id="", seq=0, status=Status.QUEUED, submitted_at=0.0, key=key, priority=priority, **fields
    )


def done(record: TaskRecord, result: bytes = b"null") -> TaskRecord:
    return msgspec.structs.replace(record, status=Status.COMPLETED, result=msgspec.Raw(result))


def execute(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def expire_leases(dsn: str, pool: str) -> None:
    """Move the pool's running leases into the past, as if their owner stopped renewing."""
    execute(
        dsn,
        "UPDATE harnpool_task SET lease_until = statement_timestamp() - interval '1 second'"
        " WHERE pool = %s AND status = 'running'",
        (pool,),
    )


@pytest.fixture
def open_store(postgres_dsn: str) -> Iterator[Callable[..., PostgresStore]]:
    """Return a factory of migrated stores (default: this test's pool); all closed at the end."""
    stores: list[PostgresStore] = []

    def open_(name: str, dsn: str = postgres_dsn, **options: Any) -> PostgresStore:
        store = PostgresStore.connect(dsn, name, **options)
        stores.append(store)
        store.migrate()
        return store

    yield open_
    for store in stores:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., PostgresStore], pool_name: str) -> PostgresStore:
    return open_store(pool_name)


class TestSchema:
    def test_migrate_creates_the_schema_once(
        self, make_postgres_database: Callable[[], str]
    ) -> None:
        dsn = make_postgres_database()
        with PostgresStore.connect(dsn, "p") as store:
            assert store.schema_version() == 0
            assert store.migrate() == 0
            assert store.schema_version() == SCHEMA_VERSION
            assert store.migrate() == SCHEMA_VERSION
        versions = execute(dsn, "SELECT version FROM harnpool_schema ORDER BY version")
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert execute(dsn, "SELECT name FROM harnpool_pool") == [("p",)]

    def test_processes_migrating_at_once_wait_for_each_other(
        self, make_postgres_database: Callable[[], str]
    ) -> None:
        dsn = make_postgres_database()
        stores = [PostgresStore.connect(dsn, f"p{i}") for i in range(4)]
        barrier = threading.Barrier(len(stores))
        found: list[int] = []
        errors: list[BaseException] = []

        def run(store: PostgresStore) -> None:
            barrier.wait()
            try:
                found.append(store.migrate())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in stores:
            s.close()
        assert errors == []
        assert sorted(found) == [0] + [SCHEMA_VERSION] * 3
        assert len(execute(dsn, "SELECT name FROM harnpool_pool")) == 4

    def test_a_newer_schema_is_refused_untouched(
        self, make_postgres_database: Callable[[], str]
    ) -> None:
        dsn = make_postgres_database()
        with PostgresStore.connect(dsn, "old") as store:
            store.migrate()
        execute(dsn, "INSERT INTO harnpool_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
        with PostgresStore.connect(dsn, "new") as store, pytest.raises(SchemaVersionError) as info:
            store.migrate()
        assert isinstance(info.value, DatabaseError)
        assert (info.value.found, info.value.supported) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
        assert info.value.pool == "new"
        assert "upgrade harnpool" in str(info.value)
        assert execute(dsn, "SELECT name FROM harnpool_pool") == [("old",)]


class TestArguments:
    def test_connect_checks_its_arguments(self, postgres_dsn: str) -> None:
        with pytest.raises(TypeError, match="name"):
            PostgresStore(postgres_dsn, 3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="name"):
            PostgresStore(postgres_dsn, "")
        with pytest.raises(TypeError, match="connections"):
            PostgresStore(postgres_dsn, "p", connections=True)
        with pytest.raises(ValueError, match="connections"):
            PostgresStore(postgres_dsn, "p", connections=0)

    def test_claim_checks_its_arguments(self, store: PostgresStore) -> None:
        ok: dict[str, Any] = {"limit": 1, "lease": 30.0, "max_concurrent": 1}
        for name, value, error in [
            ("limit", True, TypeError),
            ("limit", 0, ValueError),
            ("lease", float("nan"), ValueError),
            ("lease", 0, ValueError),
            ("lease", "30", TypeError),
            ("max_concurrent", 0, ValueError),
            ("max_recoveries", -1, ValueError),
        ]:
            with pytest.raises(error, match=name):
                store.claim("me", **{**ok, name: value})
        with pytest.raises(ValueError, match="owner"):
            store.claim("", **ok)

    def test_an_unreachable_database_is_a_database_error(self, tmp_path: Path) -> None:
        with pytest.raises(DatabaseError, match="cannot connect") as info:
            PostgresStore.connect(f"postgresql://harn@/postgres?host={tmp_path}", "p")
        assert isinstance(info.value.__cause__, psycopg.OperationalError)

    def test_a_closed_store_refuses_calls(self, store: PostgresStore) -> None:
        store.close()
        with pytest.raises(PoolClosedError):
            store.statistics()


class TestSubmit:
    def test_stores_every_field_and_the_json_byte_for_byte(self, store: PostgresStore) -> None:
        args = b'[1, {"b": 1, "a": 2.50}, "\\u0000"]'
        (stored,) = store.submit(
            [
                new(
                    "k",
                    priority=-3,
                    function="mod.fn",
                    name="reg",
                    args=msgspec.Raw(args),
                    group="g",
                    retries=2,
                    retry_on=("builtins.OSError",),
                    timeout=1.5,
                )
            ]
        )
        assert stored.id == f"t{stored.seq}"
        assert stored.status is Status.QUEUED
        assert (stored.key, stored.priority, stored.function, stored.name) == (
            "k",
            -3,
            "mod.fn",
            "reg",
        )
        assert (stored.group, stored.retries, stored.retry_on, stored.timeout) == (
            "g",
            2,
            ("builtins.OSError",),
            1.5,
        )
        assert bytes(stored.args) == args  # type: ignore[arg-type]
        assert stored.result is msgspec.UNSET
        assert store.get(stored.id) == stored
        started = store.claim("me", limit=1, lease=30, max_concurrent=1).started
        finished = store.finish(done(started[0], b'{"z": 1.0}'), owner="me")
        assert finished is not None
        assert bytes(store.get(stored.id).result) == b'{"z": 1.0}'  # type: ignore[arg-type]

    def test_a_known_key_returns_the_task_that_holds_it(self, store: PostgresStore) -> None:
        first = store.submit([new("a"), new(None), new("b"), new("a", priority=9)])
        assert first[3] == first[0]
        assert len({r.id for r in first}) == 3
        again = store.submit([new("b"), new("c")])
        assert again[0] == first[2]
        assert store.by_key("c") == again[1]
        assert store.by_key("missing") is None
        assert [r.id for r in store.tasks()] == sorted(
            {r.id for r in first + again}, key=lambda i: int(i[1:])
        )

    def test_a_finished_key_never_runs_again(self, store: PostgresStore) -> None:
        (record,) = store.submit([new("once")])
        (started,) = store.claim("me", limit=1, lease=30, max_concurrent=1).started
        store.finish(done(started), owner="me")
        (again,) = store.submit([new("once")])
        assert again.id == record.id
        assert again.status is Status.COMPLETED
        assert store.claim("me", limit=1, lease=30, max_concurrent=1).started == []

    def test_two_connections_submitting_the_same_keys_store_each_once(
        self, open_store: Callable[..., PostgresStore], pool_name: str
    ) -> None:
        stores = [open_store(pool_name), open_store(pool_name)]
        keys = [f"k{i}" for i in range(200)]
        barrier = threading.Barrier(2)
        results: list[list[TaskRecord]] = [[], []]

        def run(i: int) -> None:
            barrier.wait()
            # Opposite orders, so each one waits on keys the other inserted.
            order = keys if i == 0 else keys[::-1]
            results[i] = stores[i].submit([new(k) for k in order])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        by_key = [{r.key: r.id for r in result} for result in results]
        assert by_key[0] == by_key[1]
        assert len(set(by_key[0].values())) == len(keys)
        assert stores[0].statistics()[Status.QUEUED] == len(keys)

    def test_a_delay_is_counted_from_the_statement_and_a_not_before_kept(
        self, store: PostgresStore, postgres_dsn: str
    ) -> None:
        delayed, given, plain = store.submit(
            [new(), new(not_before=1_000_000.0), new()], delays=[60.0, 5.0, None]
        )
        rows = execute(
            postgres_dsn,
            "SELECT not_before - submitted_at = make_interval(secs => 60)"
            " FROM harnpool_task WHERE seq = %s",
            (delayed.seq,),
        )
        assert rows == [(True,)]
        assert given.not_before == 1_000_000.0  # an absolute time wins over a delay
        assert plain.not_before is None

    def test_delays_are_checked_before_anything_is_stored(self, store: PostgresStore) -> None:
        with pytest.raises(ValueError, match="delay"):
            store.submit([new()], delays=[-1.0])
        with pytest.raises(TypeError, match="delay"):
            store.submit([new()], delays=[True])
        with pytest.raises(ValueError, match="submit_delays"):
            store.submit([new(), new()], delays=[1.0])
        assert store.statistics()[Status.QUEUED] == 0

    def test_pools_have_separate_key_spaces(self, open_store: Callable[..., PostgresStore]) -> None:
        a, b = open_store("a-" + uuid.uuid4().hex), open_store("b-" + uuid.uuid4().hex)
        (in_a,) = a.submit([new("k")])
        (in_b,) = b.submit([new("k")])
        assert in_a.id != in_b.id
        with pytest.raises(UnknownTaskError):
            b.get(in_a.id)


class TestClaim:
    def test_claims_by_priority_then_submission_order(self, store: PostgresStore) -> None:
        records = store.submit([new(priority=p) for p in (0, 5, 0, 5, -1, 7)])
        order = []
        while started := store.claim("me", limit=1, lease=30, max_concurrent=10).started:
            order.append(started[0].id)
        expected = sorted(records, key=lambda r: (-r.priority, r.seq))
        assert order == [r.id for r in expected]

    def test_a_batch_comes_in_claim_order(self, store: PostgresStore) -> None:
        records = store.submit([new(priority=p) for p in (1, 3, 2)])
        started = store.claim("me", limit=3, lease=30, max_concurrent=3).started
        assert [r.id for r in started] == [records[1].id, records[2].id, records[0].id]
        assert all(r.status is Status.RUNNING and r.attempts == 1 for r in started)
        assert all(r.started_at is not None for r in started)

    def test_claims_only_the_free_slots(self, store: PostgresStore) -> None:
        store.submit([new() for _ in range(5)])
        first = store.claim("a", limit=10, lease=30, max_concurrent=3).started
        assert len(first) == 3
        assert store.claim("b", limit=10, lease=30, max_concurrent=3).started == []
        store.finish(done(first[0]), owner="a")
        assert len(store.claim("b", limit=10, lease=30, max_concurrent=3).started) == 1
        assert store.statistics()[Status.RUNNING] == 3

    def test_a_claim_says_whether_the_pool_is_at_its_limit(self, store: PostgresStore) -> None:
        store.submit([new() for _ in range(3)])
        first = store.claim("a", limit=1, lease=30, max_concurrent=2)
        assert (len(first.started), first.at_limit) == (1, False)
        second = store.claim("b", limit=10, lease=30, max_concurrent=2)
        assert (len(second.started), second.at_limit) == (1, True)
        store.finish(done(first.started[0]), owner="a")
        third = store.claim("a", limit=10, lease=30, max_concurrent=3)
        assert (len(third.started), third.at_limit) == (1, False)

    def test_a_task_waits_for_its_not_before(self, store: PostgresStore) -> None:
        store.submit([new()])
        (started,) = store.claim("me", limit=1, lease=30, max_concurrent=1).started
        failed = msgspec.structs.replace(started, error_type="builtins.OSError", error_message="x")
        later = store.requeue_for_retry(failed, owner="me", delay=3600)
        assert later is not None
        assert later.status is Status.QUEUED
        assert (later.error_type, later.started_at) == ("builtins.OSError", None)
        assert later.not_before is not None
        due = store.seconds_until_due()
        assert due is not None
        assert 3500 < due <= 3600
        assert store.claim("me", limit=1, lease=30, max_concurrent=1).started == []
        execute(
            store.dsn, "UPDATE harnpool_task SET not_before = now() WHERE pool = %s", (store.name,)
        )
        (again,) = store.claim("me", limit=1, lease=30, max_concurrent=1).started
        assert (again.id, again.attempts, again.not_before) == (started.id, 2, None)

    def test_two_processes_never_exceed_the_global_limit(
        self, postgres_dsn: str, pool_name: str, open_store: Callable[..., PostgresStore]
    ) -> None:
        tasks = 1000
        ledger = f"ledger_{uuid.uuid4().hex[:12]}"
        execute(
            postgres_dsn,
            f"CREATE TABLE {ledger} (task text, owner text, started timestamptz,"
            " ended timestamptz)",
        )
        store = open_store(pool_name)
        store.submit([new() for _ in range(tasks)])
        children = [
            subprocess.Popen(
                [sys.executable, str(CLAIMER), postgres_dsn, pool_name, ledger, "2"],
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for child in children:
            _, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
        assert store.statistics()[Status.COMPLETED] == tasks
        rows = execute(
            postgres_dsn,
            f"SELECT count(*), count(DISTINCT task), count(DISTINCT owner) FROM {ledger}"
            " WHERE task <> 'ready'",
        )
        assert rows == [(tasks, tasks, 2)]  # each ran once, and both claimers ran some
        (overlaps,) = execute(
            postgres_dsn,
            f"SELECT count(*) FROM {ledger} a JOIN {ledger} b"
            " ON a.task < b.task AND a.started < b.ended AND b.started < a.ended"
            " WHERE a.task <> 'ready' AND b.task <> 'ready'",
        )
        assert overlaps == (0,)

    def test_the_claim_uses_the_ready_index_at_10k_rows(self, store: PostgresStore) -> None:
        execute(
            store.dsn,
            "INSERT INTO harnpool_task (pool, status, priority, submitted_at)"
            " SELECT %s, 'queued', i %% 7, now() FROM generate_series(1, 10000) i",
            (store.name,),
        )
        execute(store.dsn, "ANALYZE harnpool_task")
        params = {
            "pool": store.name,
            "owner": "me",
            "limit": 10,
            "lease": 30.0,
            "max_concurrent": 10,
        }
        with psycopg.connect(store.dsn) as conn:
            rows = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {_CLAIM}", params).fetchall()
            conn.rollback()  # EXPLAIN ANALYZE claimed for real
        plan = json.dumps(rows[0][0])
        assert "harnpool_task_ready" in plan
        assert "Seq Scan" not in plan
        assert "Hash" not in plan


class TestLeases:
    def test_renew_reports_what_the_owner_still_runs(self, store: PostgresStore) -> None:
        store.submit([new(), new()])
        a, b = store.claim("me", limit=2, lease=30, max_concurrent=2).started
        before = store.lease(a.id).lease_until
        renewal = store.renew("me", lease=600)
        assert renewal.owned == {a.id, b.id}
        assert renewal.cancel_requested == frozenset()
        after = store.lease(a.id).lease_until
        assert before is not None
        assert after is not None
        assert after > before + 500
        assert store.renew("other", lease=600).owned == frozenset()

    def test_an_expired_lease_is_reclaimed_as_a_recovery(self, store: PostgresStore) -> None:
        (record,) = store.submit([new("k")])
        store.claim("dead", limit=1, lease=30, max_concurrent=1)
        # A live lease holds the slot and the task.
        assert store.claim("alive", limit=1, lease=30, max_concurrent=1).started == []
        expire_leases(store.dsn, store.name)
        claim = store.claim("alive", limit=1, lease=30, max_concurrent=1)
        (recovered,) = claim.recovered
        assert (recovered.id, recovered.status, recovered.started_at) == (
            record.id,
            Status.QUEUED,
            None,
        )
        (again,) = claim.started
        assert (again.id, again.attempts) == (record.id, 2)
        lease = store.lease(record.id)
        assert (lease.owner, lease.recoveries) == ("alive", 1)
        assert store.renew("dead", lease=30).owned == frozenset()

    def test_a_task_that_used_up_its_recoveries_fails(self, store: PostgresStore) -> None:
        (record,) = store.submit([new()])
        for owner in ("one", "two"):
            started = store.claim(owner, limit=1, lease=30, max_concurrent=1, max_recoveries=1)
            assert [r.id for r in started.started] == [record.id]
            expire_leases(store.dsn, store.name)
        claim = store.claim("three", limit=1, lease=30, max_concurrent=1, max_recoveries=1)
        assert claim.started == []
        (failed,) = claim.recovered
        assert (failed.status, failed.reason, failed.error_type) == (
            Status.FAILED,
            "lease_expired",
            "harnpool.LeaseExpired",
        )
        assert failed.finished_at is not None
        assert store.lease(record.id).recoveries == 2

    def test_a_stale_owner_cannot_record_an_outcome(self, store: PostgresStore) -> None:
        (record,) = store.submit([new()])
        (stale,) = store.claim("dead", limit=1, lease=30, max_concurrent=1).started
        expire_leases(store.dsn, store.name)
        (current,) = store.claim("alive", limit=1, lease=30, max_concurrent=1).started
        assert store.finish(done(stale, b"1"), owner="dead") is None
        # The right owner with the previous attempt's number is stale too.
        assert store.finish(done(stale, b"1"), owner="alive") is None
        assert store.requeue_for_retry(stale, owner="dead", delay=0) is None
        assert store.get(record.id).status is Status.RUNNING
        finished = store.finish(done(current, b"2"), owner="alive")
        assert finished is not None
        assert finished.status is Status.COMPLETED
        assert finished.finished_at is not None
        assert store.finish(done(current, b"3"), owner="alive") is None
        assert bytes(store.get(record.id).result) == b"2"  # type: ignore[arg-type]

    def test_finish_takes_a_final_status(self, store: PostgresStore) -> None:
        store.submit([new()])
        (started,) = store.claim("me", limit=1, lease=30, max_concurrent=1).started
        with pytest.raises(ValueError, match="final status"):
            store.finish(started, owner="me")


class TestCancel:
    def test_a_queued_task_is_cancelled_at_once(self, store: PostgresStore) -> None:
        (record,) = store.submit([new()])
        cancelled = store.cancel(record.id)
        assert (cancelled.status, cancelled.reason) == (Status.CANCELLED, "cancelled")
        assert cancelled.finished_at is not None
        assert store.claim("me", limit=1, lease=30, max_concurrent=1).started == []

    def test_a_running_task_is_asked_to_stop(self, store: PostgresStore) -> None:
        (record,) = store.submit([new()])
        (started,) = store.claim("me", limit=1, lease=30, max_concurrent=1).started
        assert store.cancel(record.id).status is Status.RUNNING
        assert store.lease(record.id).cancel_requested
        assert store.renew("me", lease=30).cancel_requested == {record.id}
        stopped = msgspec.structs.replace(started, status=Status.CANCELLED, reason="cancelled")
        finished = store.finish(stopped, owner="me")
        assert finished is not None
        assert finished.status is Status.CANCELLED

    def test_a_retry_asked_to_stop_is_cancelled(self, store: PostgresStore) -> None:
        (record,) = store.submit([new()])
        (started,) = store.claim("me", limit=1, lease=30, max_concurrent=1).started
        store.cancel(record.id)
        requeued = store.requeue_for_retry(started, owner="me", delay=0)
        assert requeued is not None
        assert requeued.status is Status.CANCELLED

    def test_a_failure_asked_to_stop_is_cancelled_but_a_result_is_kept(
        self, store: PostgresStore
    ) -> None:
        failed, completed = store.submit([new(), new()])
        started = store.claim("me", limit=2, lease=30, max_concurrent=2).started
        store.cancel(failed.id)
        store.cancel(completed.id)
        error = {"error_type": "builtins.ValueError", "error_message": "no"}
        finished = store.finish(
            msgspec.structs.replace(started[0], status=Status.FAILED, **error), owner="me"
        )
        assert finished is not None
        assert (finished.status, finished.reason) == (Status.CANCELLED, "cancelled")
        kept = store.finish(done(started[1]), owner="me")
        assert kept is not None
        assert kept.status is Status.COMPLETED

    def test_records_count_the_recoveries(self, store: PostgresStore) -> None:
        (record,) = store.submit([new()])
        store.claim("dead", limit=1, lease=30, max_concurrent=1)
        expire_leases(store.dsn, store.name)
        (started,) = store.claim("alive", limit=1, lease=30, max_concurrent=1).started
        assert (started.attempts, started.recoveries) == (2, 1)
        assert store.get(record.id).recoveries == 1

    def test_an_expired_task_asked_to_stop_is_cancelled(self, store: PostgresStore) -> None:
        (record,) = store.submit([new()])
        store.claim("dead", limit=1, lease=30, max_concurrent=1)
        store.cancel(record.id)
        expire_leases(store.dsn, store.name)
        claim = store.claim("alive", limit=1, lease=30, max_concurrent=1)
        assert claim.started == []
        assert [r.status for r in claim.recovered] == [Status.CANCELLED]

    def test_a_finished_task_is_left_alone(self, store: PostgresStore) -> None:
        (record,) = store.submit([new()])
        (started,) = store.claim("me", limit=1, lease=30, max_concurrent=1).started
        store.finish(done(started), owner="me")
        assert store.cancel(record.id).status is Status.COMPLETED

    @pytest.mark.parametrize("task_id", ["t999999999", "x1", "t0", "t", "t-1", "t\uff11"])
    def test_an_unknown_task_is_an_unknown_task_error(
        self, store: PostgresStore, task_id: str
    ) -> None:
        with pytest.raises(UnknownTaskError):
            store.cancel(task_id)
        with pytest.raises(UnknownTaskError):
            store.get(task_id)
        with pytest.raises(UnknownTaskError):
            store.lease(task_id)


class TestPrune:
    def test_finished_tasks_beyond_the_newest_are_deleted(self, store: PostgresStore) -> None:
        records = store.submit([new(key=str(i)) for i in range(4)])
        started = store.claim("me", limit=3, lease=30, max_concurrent=3).started
        for record in started:
            store.finish(done(record), owner="me")
        assert store.prune(keep=None, keep_for=None) == 0
        assert store.prune(keep=1, keep_for=None) == 2
        assert {r.id for r in store.tasks()} == {records[2].id, records[3].id}
        assert store.prune(keep=None, keep_for=0) == 1
        assert [r.id for r in store.tasks()] == [records[3].id]
        (again,) = store.submit([new(key="0")])
        assert again.id != records[0].id  # a dropped task's key no longer deduplicates

    def test_the_delete_sorts_the_finished_tasks_once_not_once_per_row(
        self, store: PostgresStore, postgres_dsn: str, pool_name: str
    ) -> None:
        # A subplan re-run per finished row sorted them all again for each one:
        # pruning 300k finished rows ran past 30 s (0.8 s as one sort).
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            row = conn.execute(
                "EXPLAIN (FORMAT JSON) " + _PRUNE,
                {"pool": pool_name, "keep": 10, "keep_for": None},
            ).fetchone()
        assert row is not None
        plan: Any = row[0]
        relations: list[str] = []

        def walk(node: Any) -> None:
            relations.append(str(node.get("Parent Relationship", "")))
            for child in node.get("Plans", []):
                walk(child)

        walk(plan[0]["Plan"])
        assert "InitPlan" in relations  # the sets to delete, computed once
        assert "SubPlan" not in relations


class TestNotifications:
    def test_a_listener_hears_submits_finishes_and_cancels(
        self, open_store: Callable[..., PostgresStore], pool_name: str
    ) -> None:
        mine, theirs = open_store(pool_name), open_store(pool_name)
        with mine.listen() as listener:
            assert listener.wait(0) == []
            (record,) = theirs.submit([new()])
            assert listener.wait(10) == ["queued"]
            (started,) = theirs.claim("them", limit=1, lease=30, max_concurrent=1).started
            theirs.cancel(record.id)
            assert listener.wait(10) == [f"cancel {record.id}"]
            theirs.finish(done(started), owner="them")
            assert listener.wait(10) == [f"finished {record.id}"]

    def test_other_pools_are_not_heard(
        self, open_store: Callable[..., PostgresStore], pool_name: str
    ) -> None:
        mine, other = open_store(pool_name), open_store(pool_name + "-other")
        with mine.listen() as listener:
            other.submit([new()])
            mine.submit([new()])
            assert listener.wait(10) == ["queued"]
            assert listener.wait(0) == []

    def test_wake_ends_a_wait_from_another_thread(self, store: PostgresStore) -> None:
        with store.listen() as listener:
            got: list[list[str]] = []
            waiter = threading.Thread(target=lambda: got.append(listener.wait(60)))
            waiter.start()
            listener.wake()
            waiter.join(timeout=10)
            assert not waiter.is_alive()
            assert got == [[]]

    def test_a_listener_reconnects_after_its_backend_is_terminated(
        self, store: PostgresStore
    ) -> None:
        with store.listen() as listener:
            pid = listener.backend_pid
            assert execute(store.dsn, "SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
            assert listener.wait(10) == [RECONNECTED]
            assert listener.backend_pid != pid
            store.submit([new()])
            assert listener.wait(10) == ["queued"]

    def test_a_closed_listener_refuses_to_wait(self, store: PostgresStore) -> None:
        listener = store.listen()
        listener.close()
        listener.close()
        with pytest.raises(PoolClosedError):
            listener.wait(0)


@pytest.fixture
def poisoned(store: PostgresStore) -> Iterator[str]:
    """Make every COMMIT that inserted this pool's key ``poison`` fail; return that key.

    A deferred constraint trigger runs at COMMIT, so the failure comes from the
    COMMIT itself, after every statement of the transaction succeeded.
    """
    name = f"harnpool_test_poison_{uuid.uuid4().hex[:12]}"
    execute(
        store.dsn,
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.pool = '{store.name}' AND NEW.key = 'poison' THEN"
        " RAISE EXCEPTION 'poisoned commit'; END IF; RETURN NULL; END $$",
    )
    execute(
        store.dsn,
        f"CREATE CONSTRAINT TRIGGER {name} AFTER INSERT ON harnpool_task"
        f" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}()",
    )
    yield "poison"
    execute(store.dsn, f"DROP TRIGGER {name} ON harnpool_task")
    execute(store.dsn, f"DROP FUNCTION {name}()")


class TestGroupWrite:
    def test_submits_of_one_group_share_keys_and_each_gets_its_own(
        self, store: PostgresStore
    ) -> None:
        written = store.write(submits=[[new("k"), new("a")], [new("b"), new("k")]])
        (k, k_new), (a, _) = written.submitted[0]
        (b, _), (k_again, k_again_new) = written.submitted[1]
        assert (k_new, k_again_new) == (True, False)
        assert k_again.id == k.id
        assert len({k.id, a.id, b.id}) == 3
        assert store.groups == 1

    def test_a_stale_outcome_is_discarded_and_the_fresh_one_stored(
        self, store: PostgresStore
    ) -> None:
        store.submit([new("a"), new("b")])
        (stale,) = store.claim("me", limit=1, lease=30, max_concurrent=2).started
        expire_leases(store.dsn, store.name)
        claim = store.claim("me", limit=2, lease=30, max_concurrent=2)
        again, fresh = claim.started  # the first again (attempt 2), and the second
        assert (again.id, again.attempts, fresh.attempts) == (stale.id, 2, 1)
        written = store.write(
            outcomes=[(done(stale, b"1"), 0.0), (done(fresh, b"2"), 0.0)], owner="me"
        )
        assert written.outcomes[0] is None
        stored = written.outcomes[1]
        assert stored is not None
        assert (stored.id, stored.status) == (fresh.id, Status.COMPLETED)
        assert store.get(stale.id).status is Status.RUNNING
        assert bytes(store.get(fresh.id).result) == b"2"  # type: ignore[arg-type]

    def test_a_group_mixes_submits_finishes_and_retries(self, store: PostgresStore) -> None:
        store.submit([new("a"), new("b")])
        a, b = store.claim("me", limit=2, lease=30, max_concurrent=2).started
        retry = msgspec.structs.replace(
            b, status=Status.QUEUED, error_type="ValueError", error_message="no"
        )
        groups = store.groups
        with store.listen() as listener:
            written = store.write(
                submits=[[new("c")]], outcomes=[(done(a), 0.0), (retry, 0.0)], owner="me"
            )
            heard = listener.wait(10) + listener.wait(0.2)
        assert [r.status if r else None for r in written.outcomes] == [
            Status.COMPLETED,
            Status.QUEUED,
        ]
        assert written.submitted[0][0][0].key == "c"
        # One transaction, one notification of each kind.
        assert sorted(heard) == [f"finished {a.id}", "queued"]
        assert store.groups == groups + 1

    def test_a_failed_commit_stores_nothing_of_the_group(
        self, store: PostgresStore, poisoned: str
    ) -> None:
        store.submit([new("a")])
        (a,) = store.claim("me", limit=1, lease=30, max_concurrent=1).started
        groups = store.groups
        with pytest.raises(DatabaseError, match="poisoned commit"):
            store.write(
                submits=[[new("b")], [new(poisoned)]], outcomes=[(done(a), 0.0)], owner="me"
            )
        assert store.groups == groups
        assert store.get(a.id).status is Status.RUNNING
        assert store.by_key("b") is None
        assert store.by_key(poisoned) is None

    def test_a_group_claims_the_slot_its_outcome_frees(self, store: PostgresStore) -> None:
        store.submit([new("a"), new("b")])
        (a,) = store.claim("me", limit=1, lease=30, max_concurrent=1).started
        request = ClaimRequest(limit=1, lease=30, max_concurrent=1)
        # Claimed alone, the limit is reached; after the finish, in the same transaction, not.
        assert store.write(claim=request, owner="me").claim == Claim(
            started=[], recovered=[], at_limit=True
        )
        written = store.write(outcomes=[(done(a), 0.0)], claim=request, owner="me")
        assert written.claim is not None
        assert [r.key for r in written.claim.started] == ["b"]
        assert store.statistics()[Status.RUNNING] == 1

    def test_a_claim_skips_an_expired_row_another_transaction_holds(
        self, store: PostgresStore
    ) -> None:
        (record,) = store.submit([new()])
        store.claim("dead", limit=1, lease=30, max_concurrent=1)
        expire_leases(store.dsn, store.name)
        with psycopg.connect(store.dsn) as holder:
            # As a group finishing it would: the row is locked until COMMIT.
            holder.execute("SELECT 1 FROM harnpool_task WHERE seq = %s FOR UPDATE", (record.seq,))
            claims: list[Claim] = []
            claimer = threading.Thread(
                target=lambda: claims.append(
                    store.claim("alive", limit=1, lease=30, max_concurrent=1)
                )
            )
            claimer.start()
            claimer.join(timeout=10)
            assert not claimer.is_alive()  # it did not wait for the row
            assert claims[0].recovered == []
            holder.rollback()
        (recovered,) = store.claim("alive", limit=1, lease=30, max_concurrent=1).recovered
        assert recovered.id == record.id

    def test_outcomes_find_their_rows_by_key_in_seq_order_at_10k_rows(
        self, store: PostgresStore
    ) -> None:
        execute(
            store.dsn,
            "INSERT INTO harnpool_task (pool, status, submitted_at, owner, lease_until)"
            " SELECT %s, 'running', now(), 'me', now() FROM generate_series(1, 10000)",
            (store.name,),
        )
        execute(store.dsn, "ANALYZE harnpool_task")
        seqs = [seq for (seq,) in execute(
            store.dsn, "SELECT seq FROM harnpool_task WHERE pool = %s LIMIT 10", (store.name,)
        )]  # fmt: skip
        params = {
            "pool": store.name,
            "owner": "me",
            "seq": sorted(seqs),
            "attempts": [0] * 10,
            "status": ["completed"] * 10,
            "reason": [None] * 10,
            "result": ["null"] * 10,
            "error_type": [None] * 10,
            "error_message": [None] * 10,
        }
        with psycopg.connect(store.dsn) as conn:
            rows = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {_FINISH}", params).fetchall()
            conn.rollback()  # EXPLAIN ANALYZE finished them for real
        plan = json.dumps(rows[0][0])
        # A nested loop over the outcomes, as given (sorted by seq), each row by its key:
        # rows are locked in seq order, and a group costs the same beside any number of rows.
        assert "harnpool_task_pkey" in plan
        assert "Nested Loop" in plan
        assert "Seq Scan" not in plan
        assert "Hash" not in plan

    def test_an_outcome_must_be_final_or_queued(self, store: PostgresStore) -> None:
        store.submit([new()])
        (a,) = store.claim("me", limit=1, lease=30, max_concurrent=1).started
        with pytest.raises(ValueError, match="final status or 'queued'"):
            store.write(outcomes=[(a, 0.0)], owner="me")
        with pytest.raises(TypeError, match="owner"):
            store.write(outcomes=[(done(a), 0.0)])
        assert store.get(a.id).status is Status.RUNNING


class TestOwnNotifications:
    def test_a_listener_can_drop_what_its_own_store_sent(
        self, open_store: Callable[..., PostgresStore], pool_name: str
    ) -> None:
        mine, theirs = open_store(pool_name), open_store(pool_name)
        with mine.listen(ignore_own=True) as listener:
            mine.submit([new("mine")])
            theirs.submit([new("theirs")])
            heard = listener.wait(10)
            heard += listener.wait(0.2)
            assert heard == ["queued"]  # theirs only
            assert mine.backend_pids()
            assert not mine.backend_pids() & theirs.backend_pids()
