"""P7: harnpool on PostgreSQL vs pgqueuer and procrastinate, same durable server, no-op tasks.

The benchmark starts its own throwaway server (``_pg_server.py``) with
``fsync=on``, ``synchronous_commit=on`` and ``full_page_writes=on``: a commit
returns once its WAL is flushed, durable like the journal. Every contender gets
a fresh database on that one server, in the same run, one after another.

Three scenarios, each in fresh worker processes (spawned, set up, then started
together on a barrier, so imports and connections are not timed):

- ``enqueue+process`` with 1 and with 2 processes: each process submits its
  share of N no-op tasks in batches of 10 while it processes tasks from the
  shared queue, 10 at a time.
- ``drain``: N tasks are put in the queue first (the fill rate is reported
  apart), then one process runs them.

The clock starts when every process is ready and stops when the database
shows all N tasks finished (committed), not when the last task body ran:
pgqueuer buffers its completions, and a completion still in a buffer is not
durable. Each contender's worker start-up (harnpool's ``open_pool``,
pgqueuer's ``run``, procrastinate's ``run_worker_async``) is inside the timing.

The contenders, each used as its documentation shows:

- harnpool: ``open_pool(dsn, name=..., max_concurrent=10 * processes,
  workers=10)`` in each process, ``submit_many`` with 10 jobs at a time; the
  task is a module-level ``async def``. The fill uses a client
  (``workers=0``).
- harnpool's SQL layer (``PostgresStore``, labelled ``harnpool store``): in
  each process a producer thread calls ``submit`` with 10 records at a time; a
  claimer thread calls ``claim`` for as many tasks as it has free workers (at
  most 10), waking on the pool's notifications (``store.listen()``); 10 worker
  threads each run a task and ``finish`` it, a transaction each. The global
  limit is the number of workers across processes. This is the SQL a pool on
  PostgreSQL runs, without the pool around it.
- pgqueuer with asyncpg (its recommended driver): ``PgQueuer(AsyncpgDriver(conn))``
  with an ``@entrypoint``, ``run(batch_size=10)``; tasks enqueued with
  ``Queries.enqueue`` (lists of 10) on a second connection. Its tables are
  ``durable`` (its default: logged).
- procrastinate with its ``PsycopgConnector``: an ``@app.task``,
  ``run_worker_async(concurrency=10)`` (LISTEN/NOTIFY on), tasks deferred with
  ``batch_defer_async`` (10 at a time). It is slow, so it runs a smaller N,
  stated in its rows; ratios compare tasks/s.

Beside the rate, each row gives the server's own counts per task, read from
``pg_stat_database`` (transactions committed) and ``pg_stat_wal`` (WAL
records, bytes, and WAL flushes to disk), after the workers' connections
closed: what each design costs the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier, Event
from typing import Any

import _bench
import _pg_server
import psycopg
from _bench import Config, Result

NAME = "p7_postgres"
HEADLINE = "ratio_vs_pgqueuer"
#: Tasks per enqueue call and per claim, and tasks in flight per process.
BATCH = 10
WORKERS = 10
#: Rows per statement when the drain scenario fills the queue.
FILL_CHUNK = 1_000
#: Longest a scenario may take before the run is abandoned.
DEADLINE = 600.0

#: What run_all passes: an existing server to use instead of starting one.
ADMIN_DSN_VARIABLE = "HARNPOOL_BENCH_PG_DSN"

CONTENDERS = ("harnpool", "harnpool store", "pgqueuer", "procrastinate")
#: With ``--prototype``: the store's claim and submit, but outcomes recorded by
#: group commit (see _GROUP_FINISH); SQL written here, not harnpool's.
PROTOTYPE = "harnpool group finish (prototype)"

# The store's guarded finish without its per-task NOTIFY; many run in one transaction.
_GROUP_FINISH = """
UPDATE harnpool_task SET status = 'completed', result = 'null',
    finished_at = statement_timestamp(), owner = NULL, lease_until = NULL
WHERE pool = %s AND seq = %s AND status = 'running' AND attempts = %s AND owner = %s
"""
#: The pool's name in every harnpool database.
POOL = "p7"

#: The worker process's task counter, for ``noop``.
_counter: Synchronized[int] | None = None


async def noop() -> None:
    """harnpool's task: module-level, so every process of the pool finds it by name."""
    assert _counter is not None
    _bump(_counter)


def _sizes(cfg: Config) -> dict[str, int]:
    """N per contender: procrastinate is an order of magnitude slower."""
    sizes: dict[str, int]
    if cfg.quick:
        sizes = {"harnpool": 200, "pgqueuer": 200, "procrastinate": 100}
    else:
        sizes = {"harnpool": 5_000, "pgqueuer": 5_000, "procrastinate": 1_000}
    sizes["harnpool store"] = sizes[PROTOTYPE] = sizes["harnpool"]
    return sizes


# -- worker processes ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Job:
    contender: str
    dsn: str
    pool: str
    produce: int
    processes: int


def _bump(counter: Synchronized[int]) -> None:
    with counter.get_lock():
        counter.value += 1


def _child(
    job: _Job, counter: Synchronized[int], barrier: Barrier, stop: Event
) -> None:  # pragma: no cover - runs in a spawned process
    runners: dict[str, Callable[[_Job, Synchronized[int], Barrier, Event], None]] = {
        "harnpool": lambda *a: asyncio.run(_harnpool(*a)),
        "harnpool store": _harnpool_store,
        PROTOTYPE: lambda job, counter, barrier, stop: _harnpool_store(
            job, counter, barrier, stop, group=True
        ),
        "pgqueuer": lambda *a: asyncio.run(_pgqueuer(*a)),
        "procrastinate": lambda *a: asyncio.run(_procrastinate(*a)),
    }

    # A worker thread that dies would leave the process waiting for a stop that never
    # comes: end the process instead, and the parent reports it at once.
    def die(args: threading.ExceptHookArgs) -> None:
        traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback)
        os._exit(1)

    threading.excepthook = die
    try:
        runners[job.contender](job, counter, barrier, stop)
    except BaseException:
        barrier.abort()
        raise


async def _harnpool(job: _Job, counter: Synchronized[int], barrier: Barrier, stop: Event) -> None:
    import harnpool

    global _counter
    _counter = counter
    await asyncio.to_thread(barrier.wait)
    async with harnpool.open_pool(
        job.dsn, name=job.pool, max_concurrent=WORKERS * job.processes, workers=WORKERS
    ) as pool:
        for _ in range(job.produce // BATCH):
            await pool.submit_many([harnpool.Job(noop) for _ in range(BATCH)])
        await asyncio.to_thread(stop.wait)


def _harnpool_store(
    job: _Job, counter: Synchronized[int], barrier: Barrier, stop: Event, group: bool = False
) -> None:
    import msgspec

    from harnpool._pg import PostgresStore
    from harnpool._records import Status, TaskRecord

    store = PostgresStore.connect(job.dsn, job.pool, connections=WORKERS + 2)
    listener = store.listen()
    owner = f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    wakeup = threading.Event()
    free = threading.Semaphore(WORKERS)
    ready: queue.Queue[TaskRecord | None] = queue.Queue()
    template = TaskRecord(
        id="", seq=0, status=Status.QUEUED, submitted_at=0.0, function="p7_postgres:noop"
    )
    result = msgspec.Raw(b"null")

    def listen() -> None:
        while not stop.is_set():
            # Only new work wakes the claimer; "finished" notices free no slot of its own.
            if "queued" in listener.wait(0.5):
                wakeup.set()

    def claim() -> None:
        while not stop.is_set():
            if not free.acquire(timeout=0.1):
                continue
            slots = 1
            while slots < BATCH and free.acquire(blocking=False):
                slots += 1
            wakeup.clear()
            started = store.claim(
                owner, limit=slots, lease=30.0, max_concurrent=WORKERS * job.processes
            ).started
            for _ in range(slots - len(started)):
                free.release()
            for record in started:
                ready.put(record)
            if not started:
                wakeup.wait(0.05)

    outcomes: queue.Queue[TaskRecord | None] = queue.Queue()

    def work() -> None:
        while (record := ready.get()) is not None:
            _bump(counter)
            if group:
                outcomes.put(record)
                continue
            store.finish(
                msgspec.structs.replace(record, status=Status.COMPLETED, result=result),
                owner=owner,
            )
            free.release()

    def finish_groups() -> None:
        # The journal's group commit, on the database: every outcome that arrived while
        # the previous transaction committed goes into the next one, with one NOTIFY.
        with psycopg.connect(job.dsn, autocommit=True) as conn:
            while (first := outcomes.get()) is not None:
                group_ = [first]
                with contextlib.suppress(queue.Empty):
                    while len(group_) < 256:
                        record = outcomes.get_nowait()
                        if record is None:
                            outcomes.put(None)
                            break
                        group_.append(record)
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(
                        _GROUP_FINISH, [(job.pool, r.seq, r.attempts, owner) for r in group_]
                    )
                    cur.execute("SELECT pg_notify(%s, 'finished')", (store.channel,))
                for _ in group_:
                    free.release()

    def produce() -> None:
        for _ in range(job.produce // BATCH):
            store.submit([template] * BATCH)

    barrier.wait()
    threads = [threading.Thread(target=f) for f in (listen, claim, produce)]
    threads += [threading.Thread(target=work) for _ in range(WORKERS)]
    finisher = threading.Thread(target=finish_groups)
    for t in [*threads, finisher]:
        t.start()
    stop.wait()
    threads[1].join()
    for _ in range(WORKERS):
        ready.put(None)
    listener.close()
    for t in threads:
        t.join()
    outcomes.put(None)
    finisher.join()
    store.close()


async def _pgqueuer(job: _Job, counter: Synchronized[int], barrier: Barrier, stop: Event) -> None:
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.queries import Queries

    consumer = await asyncpg.connect(job.dsn)
    producer = await asyncpg.connect(job.dsn)
    pgq = PgQueuer(AsyncpgDriver(consumer))

    @pgq.entrypoint("noop")
    async def noop(_: Job) -> None:
        _bump(counter)

    queries = Queries(AsyncpgDriver(producer))
    await asyncio.to_thread(barrier.wait)
    runner = asyncio.create_task(pgq.run(batch_size=BATCH))
    for _ in range(job.produce // BATCH):
        await queries.enqueue(["noop"] * BATCH, [None] * BATCH, [0] * BATCH)
    await asyncio.to_thread(stop.wait)
    pgq.shutdown.set()
    await runner
    await producer.close()
    await consumer.close()


async def _procrastinate(
    job: _Job, counter: Synchronized[int], barrier: Barrier, stop: Event
) -> None:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=job.dsn))

    @app.task(name="noop", queue="bench")
    async def noop() -> None:
        _bump(counter)

    async with app.open_async():
        await asyncio.to_thread(barrier.wait)
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=["bench"], concurrency=WORKERS, install_signal_handlers=False
            )
        )
        for _ in range(job.produce // BATCH):
            await noop.batch_defer_async(*({} for _ in range(BATCH)))
        await asyncio.to_thread(stop.wait)
        # Cancelling the task is how procrastinate's docs stop an embedded worker.
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


# -- setup, fill and "done" in the parent -------------------------------------------------


def _setup(contender: str, dsn: str, pool: str) -> None:
    if contender.startswith("harnpool"):
        from harnpool._pg import PostgresStore

        with PostgresStore.connect(dsn, pool) as store:
            store.migrate()
    elif contender == "pgqueuer":

        async def install() -> None:
            import asyncpg
            from pgqueuer.db import AsyncpgDriver
            from pgqueuer.queries import Queries

            conn = await asyncpg.connect(dsn)
            await Queries(AsyncpgDriver(conn)).install()
            await conn.close()

        asyncio.run(install())
    else:

        async def apply() -> None:
            import procrastinate

            app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        asyncio.run(apply())


def _fill(contender: str, dsn: str, pool: str, n: int) -> None:
    """Put ``n`` no-op tasks in the queue, a chunk of rows per statement."""
    chunks = [min(FILL_CHUNK, n - i) for i in range(0, n, FILL_CHUNK)]
    if contender == "harnpool":

        async def submit() -> None:
            import harnpool

            async with harnpool.open_pool(dsn, name=pool, workers=0) as client:
                for size in chunks:
                    await client.submit_many([harnpool.Job(noop) for _ in range(size)])

        asyncio.run(submit())
    elif contender in ("harnpool store", PROTOTYPE):
        from harnpool._pg import PostgresStore
        from harnpool._records import Status, TaskRecord

        template = TaskRecord(
            id="", seq=0, status=Status.QUEUED, submitted_at=0.0, function="p7_postgres:noop"
        )
        with PostgresStore.connect(dsn, pool) as store:
            for size in chunks:
                store.submit([template] * size)
    elif contender == "pgqueuer":

        async def enqueue() -> None:
            import asyncpg
            from pgqueuer.db import AsyncpgDriver
            from pgqueuer.queries import Queries

            conn = await asyncpg.connect(dsn)
            queries = Queries(AsyncpgDriver(conn))
            for size in chunks:
                await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
            await conn.close()

        asyncio.run(enqueue())
    else:

        async def defer() -> None:
            import procrastinate

            app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

            @app.task(name="noop", queue="bench")
            async def noop() -> None:  # pragma: no cover - never run here
                pass

            async with app.open_async():
                for size in chunks:
                    await noop.batch_defer_async(*({} for _ in range(size)))

        asyncio.run(defer())


def _done(contender: str, conn: psycopg.Connection[Any], pool: str, n: int) -> int:
    """How many of the ``n`` tasks the database shows finished (all were submitted)."""
    query: str
    params: tuple[object, ...]
    if contender.startswith("harnpool"):
        query, params = (
            "SELECT count(*) FROM harnpool_task WHERE pool = %s AND status = 'completed'",
            (pool,),
        )
    elif contender == "pgqueuer":
        # A finished job leaves the queue table for the log (by a buffered delete).
        query, params = "SELECT %s - count(*) FROM pgqueuer", (n,)
    else:
        query, params = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'", ()
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def _server_counts(conn: psycopg.Connection[Any]) -> dict[str, float]:
    """The server's cumulative counts: commits in this database, WAL records, bytes, flushes."""
    row = conn.execute(
        "SELECT d.xact_commit, w.wal_records, w.wal_bytes, w.wal_sync"
        " FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()"
    ).fetchone()
    assert row is not None
    return dict(
        zip(("commits", "wal_records", "wal_bytes", "wal_syncs"), map(float, row), strict=True)
    )


def _quiet(conn: psycopg.Connection[Any]) -> None:
    """Wait until this connection is the database's only one: the others flushed their stats."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        if row is not None and row[0] == 0:
            return
        time.sleep(0.01)


def _scenario(
    server: _pg_server.Server, contender: str, n: int, processes: int, drain: bool
) -> _bench.Row:
    dsn = server.create_database()
    pool = POOL
    try:
        _setup(contender, dsn, pool)
        fill_rate = None
        if drain:
            elapsed = _bench.timed()
            _fill(contender, dsn, pool, n)
            fill_rate = n / elapsed()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ANALYZE")
            ctx = multiprocessing.get_context("spawn")
            counter: Synchronized[int] = ctx.Value("q", 0)
            barrier = ctx.Barrier(processes + 1)
            stop = ctx.Event()
            share = 0 if drain else n // processes
            job = _Job(contender, dsn, pool, share, processes)
            children = [
                ctx.Process(target=_child, args=(job, counter, barrier, stop))
                for _ in range(processes)
            ]
            for child in children:
                child.start()
            try:
                barrier.wait(timeout=120)
                before = _server_counts(conn)
                elapsed = _bench.timed()
                while counter.value < n:
                    if any(c.exitcode is not None for c in children):
                        raise RuntimeError(f"{contender}: a worker process exited early")
                    if elapsed() > DEADLINE:
                        raise RuntimeError(f"{contender}: {counter.value} of {n} ran in time")
                    time.sleep(0.002)
                ran = elapsed()
                while _done(contender, conn, pool, n) < n:
                    if elapsed() > DEADLINE:
                        raise RuntimeError(f"{contender}: not every completion was committed")
                    time.sleep(0.002)
                seconds = elapsed()
            finally:
                stop.set()
                barrier.abort()
                for child in children:
                    child.join(timeout=60)
                    if child.exitcode is None:
                        child.kill()
            _quiet(conn)
            after = _server_counts(conn)
    finally:
        server.drop_database(dsn)
    per = {k: (after[k] - before[k]) / n for k in after}
    row: _bench.Row = {
        "scenario": "drain" if drain else "enqueue+process",
        "processes": processes,
        "contender": contender,
        "tasks": n,
        "seconds": seconds,
        "tasks/s": n / seconds,
        "last body ran s": ran,
        "commits/task": per["commits"],
        "WAL flushes/task": per["wal_syncs"],
        "WAL records/task": per["wal_records"],
        "WAL B/task": per["wal_bytes"],
    }
    if fill_rate is not None:
        row["fill tasks/s"] = fill_rate
    return row


SCENARIOS = (("enqueue+process", 1, False), ("enqueue+process", 2, False), ("drain", 1, True))


def run_once(cfg: Config, admin_dsn: str | None = None, prototype: bool = False) -> Result:
    # procrastinate warns when its App lives in the main module, as it does here by design.
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    sizes = _sizes(cfg)
    admin_dsn = admin_dsn or os.environ.get(ADMIN_DSN_VARIABLE) or None
    rows: list[_bench.Row] = []
    metrics: dict[str, float] = {}
    with _pg_server.running_server(admin_dsn) as server:
        for label, processes, drain in SCENARIOS:
            rates: dict[str, float] = {}
            for contender in (*CONTENDERS, PROTOTYPE) if prototype else CONTENDERS:
                row = _scenario(server, contender, sizes[contender], processes, drain)
                rows.append(row)
                rates[contender] = row["tasks/s"]
            slug = "drain" if drain else f"enqueue_process_{processes}p"
            for contender, rate in rates.items():
                metrics[f"{slug}_{contender.replace(' ', '_')}_tasks_per_s"] = rate
            for mine, label_ in (("harnpool", ""), ("harnpool store", "store_")):
                metrics[f"{slug}_{label_}ratio_vs_pgqueuer"] = rates[mine] / rates["pgqueuer"]
                metrics[f"{slug}_{label_}ratio_vs_procrastinate"] = (
                    rates[mine] / rates["procrastinate"]
                )
            for mine, label_ in (("harnpool", ""), ("harnpool store", "store_")):
                rows.append(
                    {
                        "scenario": label,
                        "processes": processes,
                        "contender": f"{mine} ratio",
                        "vs pgqueuer": metrics[f"{slug}_{label_}ratio_vs_pgqueuer"],
                        "vs procrastinate": metrics[f"{slug}_{label_}ratio_vs_procrastinate"],
                    }
                )
        settings = server.settings
        notes = [
            f"PostgreSQL {server.version}: "
            + ", ".join(f"{k}={settings[k]}" for k in sorted(settings)),
            "N per contender: "
            + ", ".join(f"{c} {n:,}" for c, n in sizes.items() if prototype or c != PROTOTYPE),
            "harnpool = open_pool on the database; harnpool store = PostgresStore's"
            " submit/claim/finish in threads, no Pool around it",
        ]
    metrics["ratio_vs_pgqueuer"] = metrics["enqueue_process_1p_ratio_vs_pgqueuer"]
    metrics["ratio_vs_procrastinate"] = metrics["enqueue_process_1p_ratio_vs_procrastinate"]
    return Result(rows=rows, metrics=metrics, notes=notes)


def main() -> None:
    p = _bench.parser(__doc__)
    p.add_argument(
        "--admin-dsn",
        default=None,
        help="use this server (as it is configured) instead of starting a durable one",
    )
    p.add_argument(
        "--prototype",
        action="store_true",
        help=f"also run {PROTOTYPE!r}: outcomes recorded by group commit",
    )
    args = p.parse_args()
    cfg = _bench.config_from(args)
    try:
        _bench.measure(
            cfg, NAME, __doc__, HEADLINE, lambda c: run_once(c, args.admin_dsn, args.prototype)
        )
    finally:
        _bench.cleanup(cfg)


if __name__ == "__main__":
    main()
