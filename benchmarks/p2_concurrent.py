"""P2: 64 concurrent submitters, durable end to end; vs aiojobs, an asyncio queue, persist-queue.

Each of 64 submitter coroutines runs its share of N no-op async tasks one after
another: submit, then wait until the task's completion is known. For harnpool
that is ``await pool.submit(noop)`` then ``await pool.wait(task_id)``, which
returns once the ``completed`` record is durable. The peers run the same
pattern without durability: aiojobs (``spawn`` then ``job.wait()``, limit 64)
and a plain ``asyncio.Queue`` feeding 64 fixed workers (put, then await a
future). harnpool also runs 64 workers (``max_concurrent=64``).

persist-queue's ``SQLiteAckQueue`` is durable (SQLite in WAL mode, a commit per
call) but synchronous, so it runs in one thread as put, get, run, ack per
task: the most favourable pattern for it (64 threads only add lock contention).
It is slow, so it runs a smaller N, stated in its row; its ratio is taken on
tasks/s. fsyncs per task for harnpool are counted with a wrapper around the
journal's fdatasync and cross-checked with ``pool.statistics().flushes``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import _bench
import aiojobs
import anyio
import persistqueue
from _bench import Config, Result

import harnpool

NAME = "p2_concurrent"
HEADLINE = "ratio_vs_aiojobs"
SUBMITTERS = 64


def _sizes(cfg: Config) -> tuple[int, int]:
    """(N for harnpool and the in-memory peers, N for persist-queue)."""
    return (640, 64) if cfg.quick else (20_480, 2_000)


async def _harnpool(cfg: Config, n: int) -> tuple[float, int, int]:
    path = cfg.scratch("p2-harnpool") / "pool.jsonl"
    counter = _bench.FsyncCounter()
    per = n // SUBMITTERS

    with counter.installed():
        async with harnpool.open_pool(path, max_concurrent=SUBMITTERS) as pool:

            async def submitter() -> None:
                for _ in range(per):
                    await pool.wait(await pool.submit(_bench.noop))

            before, calls = pool.statistics().flushes, counter.calls
            elapsed = _bench.timed()
            async with anyio.create_task_group() as tg:
                for _ in range(SUBMITTERS):
                    tg.start_soon(submitter)
            seconds = elapsed()
            flushes = pool.statistics().flushes - before
            fsyncs = counter.calls - calls
            assert pool.statistics().completed == n
    return seconds, flushes, fsyncs


async def _aiojobs(n: int) -> float:
    per = n // SUBMITTERS
    done = 0
    async with aiojobs.Scheduler(limit=SUBMITTERS) as scheduler:

        async def submitter() -> None:
            nonlocal done
            for _ in range(per):
                job = await scheduler.spawn(_bench.noop())
                await job.wait()
                done += 1

        elapsed = _bench.timed()
        async with anyio.create_task_group() as tg:
            for _ in range(SUBMITTERS):
                tg.start_soon(submitter)
        seconds = elapsed()
    assert done == n
    return seconds


async def _asyncio_queue(n: int) -> float:
    per = n // SUBMITTERS
    queue: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        while True:
            future = await queue.get()
            await _bench.noop()
            future.set_result(None)

    async def submitter() -> None:
        for _ in range(per):
            future: asyncio.Future[None] = loop.create_future()
            queue.put_nowait(future)
            await future

    workers = [asyncio.create_task(worker()) for _ in range(SUBMITTERS)]
    elapsed = _bench.timed()
    async with anyio.create_task_group() as tg:
        for _ in range(SUBMITTERS):
            tg.start_soon(submitter)
    seconds = elapsed()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return seconds


def _persist_queue(cfg: Config, n: int) -> float:
    directory = cfg.scratch("p2-persistqueue")
    queue: Any = persistqueue.SQLiteAckQueue(str(directory), auto_commit=True)
    elapsed = _bench.timed()
    for i in range(n):
        queue.put(i)
        item = queue.get()
        # the task is a no-op: nothing runs between get and ack
        queue.ack(item)
    seconds = elapsed()
    assert queue.acked_count() == n
    return seconds


def run_once(cfg: Config) -> Result:
    n, n_pq = _sizes(cfg)
    seconds, flushes, fsyncs = anyio.run(_harnpool, cfg, n, backend="asyncio")
    aio = anyio.run(_aiojobs, n, backend="asyncio")
    queue = anyio.run(_asyncio_queue, n, backend="asyncio")
    pq = _persist_queue(cfg, n_pq)
    rate = n / seconds

    def row(name: str, tasks: int, secs: float, durable: bool, fsyncs: float | None) -> _bench.Row:
        return {
            "contender": name,
            "durable": "yes" if durable else "no",
            "tasks": tasks,
            "seconds": secs,
            "tasks/s": tasks / secs,
            "harnpool ratio": rate / (tasks / secs),
            "fsyncs/task": fsyncs,
        }

    rows = [
        row("harnpool submit+wait", n, seconds, True, fsyncs / n),
        row("aiojobs spawn+wait", n, aio, False, None),
        row("asyncio.Queue + 64 workers", n, queue, False, None),
        row("persist-queue SQLiteAckQueue", n_pq, pq, True, None),
    ]
    metrics = {
        "tasks": n,
        "persist_queue_tasks": n_pq,
        "harnpool_tasks_per_s": rate,
        "aiojobs_tasks_per_s": n / aio,
        "asyncio_queue_tasks_per_s": n / queue,
        "persist_queue_tasks_per_s": n_pq / pq,
        HEADLINE: rate / (n / aio),
        "ratio_vs_asyncio_queue": rate / (n / queue),
        "ratio_vs_persist_queue": rate / (n_pq / pq),
        "flushes_per_task": flushes / n,
        "fsyncs_per_task": fsyncs / n,
    }
    notes = [
        f"persist-queue ran {n_pq:,} tasks (it is slow); its ratio compares tasks/s",
        "harnpool ratio = harnpool tasks/s / the row's tasks/s",
    ]
    return Result(rows=rows, metrics=metrics, notes=notes)


if __name__ == "__main__":
    _bench.main(NAME, __doc__, HEADLINE, run_once)
