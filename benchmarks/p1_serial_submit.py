"""P1: one submitter, strict and pipelined; vs a bare write+fdatasync loop.

Both patterns run N no-op async tasks on a pool with one worker
(``max_concurrent=1``), and are compared in the same run with a bare loop of
``os.write`` + ``os.fdatasync`` per task, writing lines the size of harnpool's
``queued`` record to a file in the same directory: one sync per task, the
physical limit for a caller who must hear "durable" before going on.

- strict: ``await pool.wait(await pool.submit(noop))`` for one task after
  another. Each task pays two syncs one after the other by design: ``submit``
  returns once the ``queued`` record is durable, and ``wait`` once the
  ``completed`` record is; nothing else is in flight to share them.
- pipelined: ``await pool.submit(noop)`` N times, then ``await pool.wait(id)``
  for each id. The worker runs tasks while later submits are being synced, so
  ``completed`` records ride with later ``queued`` ones.
- strict with ``start="eager"``: the strict pattern on a pool that starts a
  task while its ``queued`` record is being written, so the task's records
  usually share that one sync.

Each ratio is that pattern's tasks/s over the bare loop's; the bare loop runs
between the two patterns. fsyncs are counted with a wrapper around the
journal's fdatasync and cross-checked with ``pool.statistics().flushes``.
"""

from __future__ import annotations

import os
import time
from typing import Literal

import _bench
import anyio
import msgspec
from _bench import Config, Result

import harnpool
from harnpool._records import Status, TaskRecord

NAME = "p1_serial_submit"
HEADLINE = "pipelined_ratio_vs_bare_loop"


def _sizes(cfg: Config) -> int:
    return 200 if cfg.quick else 10_000


async def _harnpool(
    cfg: Config, n: int, strict: bool, start: Literal["strict", "eager"] = "strict"
) -> tuple[float, int, int]:
    path = cfg.scratch("p1-harnpool") / "pool.jsonl"
    counter = _bench.FsyncCounter()
    with counter.installed():
        async with harnpool.open_pool(path, max_concurrent=1, start=start) as pool:
            before, calls = pool.statistics().flushes, counter.calls
            elapsed = _bench.timed()
            if strict:
                for _ in range(n):
                    await pool.wait(await pool.submit(_bench.noop))
            else:
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
    strict, strict_flushes, strict_fsyncs = anyio.run(_harnpool, cfg, n, True, backend="asyncio")
    bare = _bare_loop(cfg, n)
    piped, piped_flushes, piped_fsyncs = anyio.run(_harnpool, cfg, n, False, backend="asyncio")
    eager, _, eager_fsyncs = anyio.run(_harnpool, cfg, n, True, "eager", backend="asyncio")

    def row(name: str, seconds: float, fsyncs: float) -> _bench.Row:
        return {
            "contender": name,
            "tasks": n,
            "seconds": seconds,
            "tasks/s": n / seconds,
            "ratio vs bare loop": bare / seconds,
            "fsyncs/task": fsyncs,
        }

    rows = [
        row("harnpool strict: submit, wait, one at a time", strict, strict_fsyncs / n),
        row("harnpool pipelined: submit all, wait all", piped, piped_fsyncs / n),
        row("harnpool strict, start=eager", eager, eager_fsyncs / n),
        row("bare write+fdatasync loop", bare, 1.0),
    ]
    metrics = {
        "tasks": n,
        "strict_tasks_per_s": n / strict,
        "pipelined_tasks_per_s": n / piped,
        "bare_loop_tasks_per_s": n / bare,
        "strict_ratio_vs_bare_loop": bare / strict,
        "eager_strict_ratio_vs_bare_loop": bare / eager,
        "eager_strict_fsyncs_per_task": eager_fsyncs / n,
        HEADLINE: bare / piped,
        "strict_flushes_per_task": strict_flushes / n,
        "strict_fsyncs_per_task": strict_fsyncs / n,
        "flushes_per_task": piped_flushes / n,
        "fsyncs_per_task": piped_fsyncs / n,
    }
    notes = ["strict pays two syncs per task by design; flushes/fsyncs_per_task are pipelined's"]
    return Result(rows=rows, metrics=metrics, notes=notes)


if __name__ == "__main__":
    _bench.main(NAME, __doc__, HEADLINE, run_once)
