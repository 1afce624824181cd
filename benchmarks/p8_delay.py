"""P8: how late a delayed task starts after its due time, on the journal and on PostgreSQL.

N tasks (1,000; 50 with ``--quick``) are submitted at once with ``run_at``
spread evenly over a window starting half a second after the submit (so the
submit itself is not measured). Each task's function returns the wall clock at
its start minus its due time; the table gives the 50th and 99th percentiles
and the maximum, in milliseconds. ``max_concurrent`` is 100, far more than the
tasks due at any one moment, so what is measured is the dispatch (the journal
pool's one timer; on PostgreSQL, the claimer's sleep until the next due time
and its claim), not a wait for a free worker.

The window is 2 seconds (500 tasks/s) on the journal. On PostgreSQL each task
costs a durable commit or two, and one process runs a few hundred tasks a
second (P7): at 500 tasks/s the tasks queue up and the lag measures that
throughput, so PostgreSQL runs twice, over 2 seconds (saturated) and over 10
seconds (100 tasks/s, the dispatch itself). It uses a throwaway server of its
own (``_pg_server.py``, as P7 does), one process with 100 workers;
``--without-postgres`` leaves it out.
"""

from __future__ import annotations

import datetime
import os
import statistics
import time

import _bench
import _pg_server
import anyio
from _bench import Config, Result

import harnpool
from harnpool import Job

NAME = "p8_delay"
HEADLINE = "journal_p99_ms"
#: Set to use an existing PostgreSQL server (as P7 does) instead of starting one.
ADMIN_DSN_VARIABLE = "HARNPOOL_BENCH_PG_DSN"
SPREAD = 2.0
#: PostgreSQL's second run: a due rate one process keeps up with.
SLOW_SPREAD = 10.0
LEAD = 0.5

_lags: list[float] = []
_all_started: list[anyio.Event] = []


@harnpool.task(name="benchmarks.p8_delay.lag")
async def lag(due: float, n: int) -> None:
    """Note how late this task started."""
    _lags.append(time.time() - due)
    if len(_lags) == n:
        _all_started[0].set()


async def _measure(path: str, n: int, spread: float, name: str | None = None) -> list[float]:
    _lags.clear()
    _all_started[:] = [anyio.Event()]
    async with harnpool.open_pool(path, max_concurrent=100, name=name) as pool:
        start = time.time() + LEAD
        dues = [start + spread * i / n for i in range(n)]
        await pool.submit_many(
            Job(lag, due, n, run_at=datetime.datetime.fromtimestamp(due, datetime.UTC))
            for due in dues
        )
        with anyio.fail_after(LEAD + spread + 60):
            await _all_started[0].wait()
    return list(_lags)


def _row(storage: str, spread: float, lags: list[float]) -> _bench.Row:
    ms = sorted(1000 * x for x in lags)
    return {
        "storage": storage,
        "tasks": len(ms),
        "over s": spread,
        "p50 ms": statistics.median(ms),
        "p99 ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "max ms": ms[-1],
        "early": sum(1 for x in ms if x < 0),
    }


def run_once(cfg: Config, postgres: bool = True, admin_dsn: str | None = None) -> Result:
    n = 50 if cfg.quick else 1000
    journal = str(cfg.scratch("p8") / "pool.jsonl")
    rows = [_row("journal", SPREAD, anyio.run(_measure, journal, n, SPREAD))]
    notes = [f"{n} tasks due over the window, max_concurrent=100"]
    if postgres:
        admin_dsn = admin_dsn or os.environ.get(ADMIN_DSN_VARIABLE) or None
        with _pg_server.running_server(admin_dsn) as server:
            for spread in (SPREAD, 0.5 if cfg.quick else SLOW_SPREAD):
                dsn = server.create_database()
                try:
                    rows.append(_row("postgres", spread, anyio.run(_measure, dsn, n, spread, "p8")))
                finally:
                    server.drop_database(dsn)
            notes.append(f"PostgreSQL {server.version}, one process with 100 workers")
    metrics: dict[str, float] = {"tasks": float(n)}
    for row in rows:
        # PostgreSQL's headline figures are those of the run it keeps up with (the last).
        label = (
            row["storage"]
            if row["over s"] != SPREAD or row["storage"] == "journal"
            else ("postgres_saturated")
        )
        for column, metric in (("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("max ms", "max_ms")):
            metrics[f"{label}_{metric}"] = row[column]
        metrics[f"{label}_early"] = row["early"]
    return Result(rows=rows, metrics=metrics, notes=notes)


def main() -> None:
    p = _bench.parser(__doc__)
    p.add_argument("--without-postgres", action="store_true", help="measure the journal only")
    p.add_argument(
        "--admin-dsn", default=None, help="use this server instead of starting a durable one"
    )
    args = p.parse_args()
    cfg = _bench.config_from(args)
    try:
        _bench.measure(
            cfg,
            NAME,
            __doc__,
            HEADLINE,
            lambda c: run_once(c, not args.without_postgres, args.admin_dsn),
        )
    finally:
        _bench.cleanup(cfg)


if __name__ == "__main__":
    main()
