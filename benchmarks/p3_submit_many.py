"""P3: ``pool.submit_many`` in batches of 1,000 jobs: tasks/s and fsyncs per task.

One submitter calls ``await pool.submit_many([harnpool.Job(noop, i, key=...,
priority=...), ...])`` for consecutive batches of 1,000 (each job has its own
idempotency key and one of three priorities), while 64 workers run the no-op
tasks. "submit tasks/s" is N over the time until the last batch is durable
(building the Job lists included); "end-to-end tasks/s" is N over the time until
every task's ``completed`` record is durable (the pool's block has exited).
"submit_many alone" repeats the submission on a pool whose single worker is
held until the last batch is in, so it times ``submit_many`` without the
workers sharing the CPU; the target is checked on the first, stricter figure.
fsyncs are counted over the whole run with a wrapper around the journal's
fdatasync and cross-checked with ``pool.statistics().flushes``.
"""

from __future__ import annotations

import _bench
import anyio
from _bench import Config, Result

import harnpool

NAME = "p3_submit_many"
HEADLINE = "submit_tasks_per_s"
BATCH = 1_000
WORKERS = 64


def _sizes(cfg: Config) -> int:
    return 2 * BATCH if cfg.quick else 20 * BATCH


async def _harnpool(cfg: Config, n: int) -> tuple[float, float, int, int]:
    path = cfg.scratch("p3-harnpool") / "pool.jsonl"
    counter = _bench.FsyncCounter()
    with counter.installed():
        async with harnpool.open_pool(path, max_concurrent=WORKERS) as pool:
            before, calls = pool.statistics().flushes, counter.calls
            elapsed = _bench.timed()
            for start in range(0, n, BATCH):
                jobs = [
                    harnpool.Job(_bench.noop, i, key=f"job-{i}", priority=i % 3)
                    for i in range(start, start + BATCH)
                ]
                ids = await pool.submit_many(jobs)
                assert len(ids) == BATCH
            submitted = elapsed()
        finished = elapsed()
        stats = pool.statistics()
    assert stats.completed == n
    return submitted, finished, stats.flushes - before, counter.calls - calls


async def _submit_only(cfg: Config, n: int) -> float:
    """Time ``submit_many`` alone: the one worker is held until every batch is in."""
    path = cfg.scratch("p3-held") / "pool.jsonl"
    gate = anyio.Event()

    async def held() -> None:
        await gate.wait()

    async with harnpool.open_pool(path, max_concurrent=1) as pool:
        await pool.submit(held)
        elapsed = _bench.timed()
        for start in range(0, n, BATCH):
            jobs = [
                harnpool.Job(_bench.noop, i, key=f"job-{i}", priority=i % 3)
                for i in range(start, start + BATCH)
            ]
            await pool.submit_many(jobs)
        seconds = elapsed()
        gate.set()
    return seconds


def run_once(cfg: Config) -> Result:
    n = _sizes(cfg)
    submitted, finished, flushes, fsyncs = anyio.run(_harnpool, cfg, n, backend="asyncio")
    alone = anyio.run(_submit_only, cfg, n, backend="asyncio")
    rows = [
        {
            "measure": "submit_many, batches of 1,000",
            "tasks": n,
            "seconds": submitted,
            "tasks/s": n / submitted,
        },
        {
            "measure": "submit_many alone (worker held)",
            "tasks": n,
            "seconds": alone,
            "tasks/s": n / alone,
        },
        {
            "measure": "end to end (all completed durable)",
            "tasks": n,
            "seconds": finished,
            "tasks/s": n / finished,
            "fsyncs/task": fsyncs / n,
        },
    ]
    metrics = {
        "tasks": n,
        HEADLINE: n / submitted,
        "submit_alone_tasks_per_s": n / alone,
        "end_to_end_tasks_per_s": n / finished,
        "flushes_per_task": flushes / n,
        "fsyncs_per_task": fsyncs / n,
    }
    return Result(rows=rows, metrics=metrics)


if __name__ == "__main__":
    _bench.main(NAME, __doc__, HEADLINE, run_once)
