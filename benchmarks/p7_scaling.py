"""How the size of one pool's table moves a claim: the figures behind docs/scaling.md.

On a throwaway durable server (``_pg_server.py``: fsync on), for each case it
fills one pool's table with rows shaped as the store writes them (by
``INSERT ... SELECT generate_series``, one statement), runs ``ANALYZE``, and
reports:

- the claim statement's execution time from ``EXPLAIN (ANALYZE, BUFFERS)``
  (10 tasks, in a transaction rolled back so the queue stays as it was), and
  the plan's top node;
- the median and p99 wall time of ``PostgresStore.claim`` for one task
  followed by ``finish`` (what a worker pays per task), over 200 tasks;
- ``statistics()`` (the count by status every open runs), the table's and its
  indexes' sizes; the time ``prune(keep=0)``'s statement takes (rolled back;
  ``inf`` when it ran past a minute), then ``prune(keep_for=0)`` deleting the
  finished rows, then ``VACUUM``.

Cases: 10k and 100k queued tasks; 10k queued beside 1M finished ones.

Then what a ``NOTIFY`` costs a commit: 8 threads, each on a connection of its
own, update a row of their own and commit, as fast as they can for a few
seconds, without and then with a ``pg_notify`` in each transaction (as the
store's ``finish`` does). PostgreSQL takes a lock on the whole server when a
transaction that notified commits, and holds it through the commit's WAL flush.

Usage: ``python benchmarks/p7_scaling.py [--admin-dsn DSN] [--quick]``; prints a
table and writes ``p7_scaling.json`` like the other scripts.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from typing import Any

import _bench
import _pg_server
import psycopg
from _bench import Config, Result

from harnpool._pg import PostgresStore
from harnpool._pg._schema import LOCK_CLASS
from harnpool._pg._store import _CLAIM, _LOCK, _PRUNE
from harnpool._records import Status

NAME = "p7_scaling"
HEADLINE = "claim_ms_100k_queued"
POOL = "scale"
SAMPLES = 200
#: Longest the by-count prune may run before it is reported as not finishing.
PRUNE_TIMEOUT = 60.0

_FILL = """
INSERT INTO harnpool_task (pool, status, function, submitted_at, attempts, result,
    started_at, finished_at)
SELECT %(pool)s, %(status)s, 'p7_postgres:noop', statement_timestamp(),
    CASE WHEN %(status)s = 'queued' THEN 0 ELSE 1 END,
    CASE WHEN %(status)s = 'queued' THEN NULL ELSE 'null' END,
    CASE WHEN %(status)s = 'queued' THEN NULL ELSE statement_timestamp() END,
    CASE WHEN %(status)s = 'queued' THEN NULL ELSE statement_timestamp() END
FROM generate_series(1, %(n)s)
"""


def _cases(cfg: Config) -> list[tuple[str, int, int]]:
    """(label, queued, finished)."""
    if cfg.quick:
        return [("1k queued", 1_000, 0), ("1k queued + 10k finished", 1_000, 10_000)]
    return [
        ("10k queued", 10_000, 0),
        ("100k queued", 100_000, 0),
        ("10k queued + 1M finished", 10_000, 1_000_000),
    ]


def _explain(conn: psycopg.Connection[Any]) -> tuple[float, str]:
    params = {
        "pool": POOL,
        "owner": "explain",
        "limit": 10,
        "lease": 30.0,
        "max_concurrent": 1_000,
    }
    with conn.transaction(force_rollback=True):
        conn.execute(_LOCK, (LOCK_CLASS, POOL))
        row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + _CLAIM, params).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    top = plan[0]["Plan"]
    return float(plan[0]["Execution Time"]), str(top["Node Type"])


def _prune_by_count(conn: psycopg.Connection[Any]) -> float:
    """Seconds ``prune(keep=0)``'s statement takes, rolled back; inf past PRUNE_TIMEOUT."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(f"SET LOCAL statement_timeout = {int(PRUNE_TIMEOUT * 1000)}")
            elapsed = _bench.timed()
            conn.execute(_PRUNE, {"pool": POOL, "keep": 0, "keep_for": None})
            return elapsed()
    except psycopg.errors.QueryCanceled:
        return math.inf


def _size(conn: psycopg.Connection[Any], relation: str) -> float:
    row = conn.execute("SELECT pg_total_relation_size(%s)", (relation,)).fetchone()
    assert row is not None
    return float(row[0]) / 2**20


def _case(server: _pg_server.Server, label: str, queued: int, finished: int) -> _bench.Row:
    import msgspec

    dsn = server.create_database()
    try:
        with PostgresStore.connect(dsn, POOL) as store, psycopg.connect(dsn) as conn:
            store.migrate()
            conn.autocommit = True
            elapsed = _bench.timed()
            if finished:
                conn.execute(_FILL, {"pool": POOL, "status": "completed", "n": finished})
            conn.execute(_FILL, {"pool": POOL, "status": "queued", "n": queued})
            fill_s = elapsed()
            conn.execute("ANALYZE harnpool_task")
            explain_ms, node = _explain(conn)
            walls: list[float] = []
            result = msgspec.Raw(b"null")
            for _ in range(SAMPLES):
                began = time.perf_counter()
                (record,) = store.claim("probe", limit=1, lease=30.0, max_concurrent=1_000).started
                store.finish(
                    msgspec.structs.replace(record, status=Status.COMPLETED, result=result),
                    owner="probe",
                )
                walls.append((time.perf_counter() - began) * 1e3)
            elapsed = _bench.timed()
            store.statistics()
            statistics_ms = elapsed() * 1e3
            table_mb = _size(conn, "harnpool_task")
            indexes = conn.execute(
                "SELECT sum(pg_relation_size(indexrelid)) FROM pg_index"
                " WHERE indrelid = 'harnpool_task'::regclass"
            ).fetchone()
            assert indexes is not None
            keep_s = _prune_by_count(conn)
            elapsed = _bench.timed()
            pruned = store.prune(keep=None, keep_for=0.0)
            prune_s = elapsed()
            elapsed = _bench.timed()
            conn.execute("VACUUM harnpool_task")
            vacuum_s = elapsed()
            after_mb = _size(conn, "harnpool_task")
    finally:
        server.drop_database(dsn)
    walls.sort()
    return {
        "case": label,
        "queued": queued,
        "finished": finished,
        "fill s": fill_s,
        "claim EXPLAIN ms": explain_ms,
        "plan top": node,
        "claim+finish p50 ms": statistics.median(walls),
        "claim+finish p99 ms": walls[int(len(walls) * 0.99) - 1],
        "statistics() ms": statistics_ms,
        "table+indexes MB": table_mb,
        "indexes MB": float(indexes[0] or 0) / 2**20,
        "prune keep=0 s": keep_s,
        "pruned": pruned,
        "prune keep_for=0 s": prune_s,
        "VACUUM s": vacuum_s,
        "after VACUUM MB": after_mb,
    }


def _commits_per_s(dsn: str, notify: bool, seconds: float, threads: int = 8) -> float:
    """Commits per second of ``threads`` connections updating a row each, with or without NOTIFY."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS notify_probe")
        conn.execute("CREATE TABLE notify_probe (id int PRIMARY KEY, n bigint NOT NULL)")
        conn.execute(
            "INSERT INTO notify_probe SELECT i, 0 FROM generate_series(0, %s) i", (threads,)
        )
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    deadline = [0.0]

    def loop(i: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            start.wait()
            while time.perf_counter() < deadline[0]:
                with conn.transaction():
                    conn.execute("UPDATE notify_probe SET n = n + 1 WHERE id = %s", (i,))
                    if notify:
                        conn.execute("SELECT pg_notify('notify_probe', 'x')")
                counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    deadline[0] = time.perf_counter() + seconds
    start.wait()
    for w in workers:
        w.join()
    return sum(counts) / seconds


def run_once(cfg: Config, admin_dsn: str | None = None) -> Result:
    rows: list[_bench.Row] = []
    metrics: dict[str, float] = {}
    with _pg_server.running_server(admin_dsn) as server:
        for label, queued, finished in _cases(cfg):
            row = _case(server, label, queued, finished)
            rows.append(row)
            slug = label.replace(" + ", "_").replace(" ", "_")
            metrics[f"claim_ms_{slug}"] = row["claim EXPLAIN ms"]
            metrics[f"claim_finish_p50_ms_{slug}"] = row["claim+finish p50 ms"]
        dsn = server.create_database()
        try:
            seconds = 1.0 if cfg.quick else 5.0
            for notify in (False, True):
                rate = _commits_per_s(dsn, notify, seconds)
                label = "8 connections, commit " + ("with NOTIFY" if notify else "without NOTIFY")
                rows.append({"case": label, "commits/s": rate})
                metrics["commits_per_s_" + ("notify" if notify else "plain")] = rate
        finally:
            server.drop_database(dsn)
        notes = [
            f"PostgreSQL {server.version}: "
            + ", ".join(f"{k}={v}" for k, v in sorted(server.settings.items()))
        ]
    metrics.setdefault(HEADLINE, metrics[next(iter(metrics))])
    return Result(rows=rows, metrics=metrics, notes=notes)


def main() -> None:
    p = _bench.parser(__doc__)
    p.add_argument("--admin-dsn", default=None, help="use this server instead of starting one")
    args = p.parse_args()
    if args.runs is None:
        args.runs = 1
    cfg = _bench.config_from(args)
    try:
        _bench.measure(cfg, NAME, __doc__, HEADLINE, lambda c: run_once(c, args.admin_dsn))
    finally:
        _bench.cleanup(cfg)


if __name__ == "__main__":
    main()
