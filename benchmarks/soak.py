"""Soak: 1M no-op tasks through one open pool, ``keep_finished=10_000``; RSS and file size.

One pool (``max_concurrent=8``, ``keep_finished=10_000``) stays open while one
submitter feeds it batches of 1,000 ``Job(noop)`` with ``submit_many``,
keeping at most two batches unfinished: before submitting a batch it waits for
every task of the batch before last. At every checkpoint (every tenth of the
run: each 100,000 tasks at the default size) it prints the process's RSS
(VmRSS from /proc/self/status, after a garbage collection), the journal's size
and the tasks/s since the previous checkpoint. A steady service needs both to
level off; the table shows whether they do, and the figures say how fast they
grow per task between the first and the last checkpoint. After the block is
left the pool is opened again with the same ``keep_finished``, as a restart
would, and the journal's size after that open's compaction is the last row.

The soak runs once (``--runs`` is ignored), also within ``run_all.py``;
``make soak`` runs it alone, and ``--tasks`` sets its size (``--quick``: 20,000).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import _bench
import anyio
from _bench import Config, Result

import harnpool

NAME = "soak"
HEADLINE = "rss_growth_bytes_per_task"
BATCH = 1_000
WORKERS = 8
KEEP_FINISHED = 10_000
CHECKPOINTS = 10


def _sample(path: Path) -> dict[str, float]:
    """RSS after a garbage collection and the journal's size, in MB; taken between
    batches, where reading two small files does not hold up the workers."""
    gc.collect()
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return {"RSS MB": rss / 1e6, "file MB": path.stat().st_size / 1e6}


async def _soak(path: Path, tasks: int) -> list[_bench.Row]:
    every = max(BATCH, tasks // CHECKPOINTS // BATCH * BATCH)
    rows: list[_bench.Row] = []
    async with harnpool.open_pool(
        path, max_concurrent=WORKERS, keep_finished=KEEP_FINISHED
    ) as pool:
        rows.append(
            {
                "tasks": 0,
                "seconds": None,
                "tasks/s": None,
                **_sample(path),
            }
        )
        start = last = time.perf_counter()
        in_flight: list[list[str]] = []
        submitted = 0
        while submitted < tasks:
            if len(in_flight) == 2:
                for task_id in in_flight.pop(0):
                    await pool.wait(task_id)
            size = min(BATCH, tasks - submitted)
            in_flight.append(await pool.submit_many([harnpool.Job(_bench.noop)] * size))
            submitted += size
            if submitted % every == 0 or submitted == tasks:
                for batch in in_flight:
                    for task_id in batch:
                        await pool.wait(task_id)
                in_flight.clear()
                now = time.perf_counter()
                done = submitted - rows[-1]["tasks"]
                rows.append(
                    {
                        "tasks": submitted,
                        "seconds": now - start,
                        "tasks/s": done / (now - last),
                        **_sample(path),
                    }
                )
                last = time.perf_counter()
        stats = pool.statistics()
        assert stats.completed + stats.dropped_finished == tasks
    return rows


async def _reopen(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    async with harnpool.open_pool(
        path, max_concurrent=WORKERS, keep_finished=KEEP_FINISHED
    ) as pool:
        seconds = time.perf_counter() - start
        finished = pool.recovery.finished
    return seconds, finished


def run_once(cfg: Config, tasks: int) -> Result:
    path = cfg.scratch("soak-harnpool") / "pool.jsonl"
    rows = anyio.run(_soak, path, tasks, backend="asyncio")
    open_seconds, kept = anyio.run(_reopen, path, backend="asyncio")
    first, final = rows[1], rows[-1]
    span = final["tasks"] - first["tasks"]
    rss_growth = (final["RSS MB"] - first["RSS MB"]) * 1e6 / span if span else 0.0
    file_growth = (final["file MB"] - first["file MB"]) * 1e6 / span if span else 0.0
    reopened = path.stat().st_size
    rows.append({"tasks": "reopened", "seconds": open_seconds, "file MB": reopened / 1e6})
    metrics = {
        "tasks": tasks,
        "keep_finished": KEEP_FINISHED,
        "seconds": final["seconds"],
        "tasks_per_s": tasks / final["seconds"],
        "rss_bytes_start": rows[0]["RSS MB"] * 1e6,
        "rss_bytes_end": final["RSS MB"] * 1e6,
        "file_bytes_end": final["file MB"] * 1e6,
        HEADLINE: rss_growth,
        "file_growth_bytes_per_task": file_growth,
        "reopen_seconds": open_seconds,
        "reopen_file_bytes": reopened,
        "reopen_finished_tasks": kept,
    }
    notes = [
        f"growth per task is measured from {first['tasks']:,} tasks to {final['tasks']:,}",
        "the last row: the journal after reopening, compacted on open with the same keep_finished",
    ]
    return Result(rows=rows, metrics=metrics, notes=notes)


def default_tasks(cfg: Config) -> int:
    return 20_000 if cfg.quick else 1_000_000


def main() -> None:
    p = _bench.parser(__doc__)
    p.add_argument("--tasks", type=int, default=None, help="tasks to run (default 1,000,000)")
    args = p.parse_args()
    args.runs = 1
    cfg = _bench.config_from(args)
    tasks = args.tasks if args.tasks is not None else default_tasks(cfg)
    if tasks < BATCH:
        raise SystemExit(f"--tasks must be at least {BATCH:,}")
    try:
        _bench.measure(cfg, NAME, __doc__, HEADLINE, lambda c: run_once(c, tasks))
    finally:
        _bench.cleanup(cfg)


if __name__ == "__main__":
    main()
