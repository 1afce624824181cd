"""P1: one submitter awaiting each submit, then wait; vs a bare write+fdatasync loop.

harnpool is compared with a bare loop of ``os.write`` + ``os.fdatasync`` per task
on a file in the same directory.

The bare loop is the physical limit for this pattern: a caller who must hear
"durable" before submitting the next task pays one fdatasync per task. harnpool
runs N no-op async tasks (``max_concurrent=1``); the loop writes N lines the size
of harnpool's ``queued`` record. The ratio is harnpool's tasks/s over the loop's.
"""

from __future__ import annotations

import os
import time

import _bench
import anyio
import msgspec
from _bench import Config, Result

import harnpool
from harnpool._records import Status, TaskRecord

NAME = "p1_serial_submit"
HEADLINE = "ratio_vs_bare_loop"


def _sizes(cfg: Config) -> int:
    return 200 if cfg.quick else 20_000


async def _harnpool(cfg: Config, n: int) -> tuple[float, int, int]:
    path = cfg.scratch("p1-harnpool") / "pool.jsonl"
    counter = _bench.FsyncCounter()
    with counter.installed():
        async with harnpool.open_pool(path) as pool:
            before, calls = pool.statistics().flushes, counter.calls
            elapsed = _bench.timed()
            ids = [await pool.submit(_bench.noop) for _ in range(n)]
            for task_id in ids:
                await pool.wait(task_id)
            seconds = elapsed()
            flushes = pool.statistics().flushes - before
            fsyncs = counter.calls - calls
            assert pool.statistics().completed == n
    return seconds, flushes, fsyncs


def _bare_loop(cfg: Config, n: int) -> float:
    record = TaskRecord(
        id=f"t{n}",
        seq=n,
        status=Status.QUEUED,
        submitted_at=time.time(),
        function="_bench.noop",
    )
    line = msgspec.json.encode(record) + b"\n"
    path = cfg.scratch("p1-bare") / "bare.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        os.fsync(fd)
        elapsed = _bench.timed()
        for _ in range(n):
            os.write(fd, line)
            os.fdatasync(fd)
        return elapsed()
    finally:
        os.close(fd)


def run_once(cfg: Config) -> Result:
    n = _sizes(cfg)
    seconds, flushes, fsyncs = anyio.run(_harnpool, cfg, n, backend="asyncio")
    bare = _bare_loop(cfg, n)
    ratio = bare / seconds
    rows = [
        {
            "contender": "harnpool submit+wait",
            "tasks": n,
            "seconds": seconds,
            "tasks/s": n / seconds,
            "ratio": ratio,
            "fsyncs/task": fsyncs / n,
        },
        {
            "contender": "bare write+fdatasync loop",
            "tasks": n,
            "seconds": bare,
            "tasks/s": n / bare,
            "ratio": 1.0,
            "fsyncs/task": 1.0,
        },
    ]
    metrics = {
        "tasks": n,
        "harnpool_tasks_per_s": n / seconds,
        "bare_loop_tasks_per_s": n / bare,
        HEADLINE: ratio,
        "flushes_per_task": flushes / n,
        "fsyncs_per_task": fsyncs / n,
    }
    return Result(rows=rows, metrics=metrics)


if __name__ == "__main__":
    _bench.main(NAME, __doc__, HEADLINE, run_once)
