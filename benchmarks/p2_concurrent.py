"""P2: 64 submitters, 8 workers, durable end to end; vs aiojobs, asyncio queue, persist-queue, huey.

Each of 64 submitter coroutines runs its share of N no-op async tasks one after
another: submit, then wait until the task's completion is known. For harnpool
that is ``await pool.submit(noop)`` then ``await pool.wait(task_id)``, which
returns once the ``completed`` record is durable; the pool runs 8 workers
(``max_concurrent=8``), once as it is and once with ``start="eager"`` (a task
may start before its ``queued`` record is durable). The in-memory peers run the
same pattern in the same event loop without durability: aiojobs (``spawn`` then ``job.wait()``,
``limit=8``) and a plain ``asyncio.Queue`` feeding 8 fixed workers (put, then
await a future).

The durable peers are synchronous libraries, so they run as they are meant to
be used: 8 producer threads put their share of the N tasks while 8 consumer
threads take, run and settle them; the time runs until the last task has run.
That pattern is pipelined (a producer does not wait for its task), which
favours them over harnpool's submit-then-wait.

- persist-queue's ``SQLiteAckQueue`` with its default durability (SQLite's
  rollback journal, ``synchronous=FULL``, a commit per put, get and ack;
  ``multithreading=True`` for its use from threads): put, then get, ack.
- huey's ``SqliteHuey`` on a file (WAL, ``synchronous=FULL``; enqueue and
  dequeue each commit) with a real consumer (``huey.create_consumer``) running
  8 worker threads in this process. huey deletes a task from its queue when a
  worker takes it and, for a task returning ``None``, records nothing when it
  finishes. Its workers poll an empty queue; the poll starts at 1 ms and backs
  off to 10 ms here (huey's defaults, 0.1 s to 10 s, would measure the poll).

Both are slow, so they run a smaller N, stated in their rows; ratios compare
tasks/s. fsyncs per task for harnpool are counted with a wrapper around the
journal's fdatasync and cross-checked with ``pool.statistics().flushes``; the
peers' syncs happen inside SQLite and are not counted.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import Any, Literal

import _bench
import aiojobs
import anyio
import huey
import persistqueue
from _bench import Config, Result

import harnpool

NAME = "p2_concurrent"
HEADLINE = "ratio_vs_aiojobs"
SUBMITTERS = 64
WORKERS = 8
#: Producer and consumer threads for the synchronous durable peers.
THREADS = 8
#: What persist-queue's consumers take as their cue to stop (a task is 0).
STOP = -1


def _sizes(cfg: Config) -> tuple[int, int]:
    """(N for harnpool and the in-memory peers, N for the durable peers)."""
    return (640, 64) if cfg.quick else (20_480, 2_000)


async def _harnpool(
    cfg: Config, n: int, start: Literal["strict", "eager"] = "strict"
) -> tuple[float, int, int]:
    path = cfg.scratch("p2-harnpool") / "pool.jsonl"
    counter = _bench.FsyncCounter()
    per = n // SUBMITTERS

    with counter.installed():
        async with harnpool.open_pool(path, max_concurrent=WORKERS, start=start) as pool:

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
    async with aiojobs.Scheduler(limit=WORKERS) as scheduler:

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

    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    elapsed = _bench.timed()
    async with anyio.create_task_group() as tg:
        for _ in range(SUBMITTERS):
            tg.start_soon(submitter)
    seconds = elapsed()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return seconds


def _threads(n: int, produce: Callable[[], object], consume: Callable[[], object]) -> None:
    """Run THREADS producers (each calling ``produce`` n/THREADS times) and
    THREADS consumers (each running ``consume`` once); return when all have ended."""
    per = n // THREADS

    def producer() -> None:
        for _ in range(per):
            produce()

    threads = [threading.Thread(target=producer) for _ in range(THREADS)]
    threads += [threading.Thread(target=consume) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _persist_queue(cfg: Config, n: int) -> float:
    directory = cfg.scratch("p2-persistqueue")
    queue: Any = persistqueue.SQLiteAckQueue(str(directory), multithreading=True)
    remaining = n
    lock = threading.Lock()

    def consume() -> None:
        nonlocal remaining
        while True:
            # raw: acked by its row id (a lookup by identity would confuse equal small ints)
            item = queue.get(raw=True)
            queue.ack(item)
            if item["data"] == STOP:  # one per consumer, put once the last task has run
                return
            with lock:
                remaining -= 1
                if remaining == 0:
                    for _ in range(THREADS):
                        queue.put(STOP)

    elapsed = _bench.timed()
    _threads(n, lambda: queue.put(0), consume)
    seconds = elapsed()
    assert queue.acked_count() == n + THREADS
    return seconds


def _huey(cfg: Config, n: int) -> float:
    directory = cfg.scratch("p2-huey")
    app = huey.SqliteHuey("p2", filename=str(directory / "huey.db"))
    ran = 0
    lock = threading.Lock()
    all_ran = threading.Event()

    @app.task()  # type: ignore[untyped-decorator]
    def task() -> None:
        nonlocal ran
        with lock:
            ran += 1
            if ran == n:
                all_ran.set()

    consumer = app.create_consumer(
        workers=THREADS,
        worker_type="thread",
        periodic=False,
        initial_delay=0.001,
        max_delay=0.01,
        check_worker_health=False,
    )
    # The consumer installs its own signal handlers: give the process its own back.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    consumer.start()
    try:
        elapsed = _bench.timed()
        _threads(n, task, all_ran.wait)
        seconds = elapsed()
    finally:
        consumer.stop(graceful=True)
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert ran == n
    assert app.pending_count() == 0
    return seconds


def run_once(cfg: Config) -> Result:
    n, n_sql = _sizes(cfg)
    seconds, flushes, fsyncs = anyio.run(_harnpool, cfg, n, backend="asyncio")
    aio = anyio.run(_aiojobs, n, backend="asyncio")
    eager, _, eager_fsyncs = anyio.run(_harnpool, cfg, n, "eager", backend="asyncio")
    queue = anyio.run(_asyncio_queue, n, backend="asyncio")
    pq = _persist_queue(cfg, n_sql)
    hy = _huey(cfg, n_sql)
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
        row("harnpool submit+wait, 8 workers", n, seconds, True, fsyncs / n),
        row("harnpool submit+wait, 8 workers, start=eager", n, eager, True, eager_fsyncs / n),
        row("aiojobs spawn+wait, limit 8", n, aio, False, None),
        row("asyncio.Queue + 8 workers", n, queue, False, None),
        row("persist-queue SQLiteAckQueue, 8+8 threads", n_sql, pq, True, None),
        row("huey SqliteHuey, 8 producers, 8 consumer threads", n_sql, hy, True, None),
    ]
    metrics = {
        "tasks": n,
        "persist_queue_tasks": n_sql,
        "huey_tasks": n_sql,
        "harnpool_tasks_per_s": rate,
        "aiojobs_tasks_per_s": n / aio,
        "asyncio_queue_tasks_per_s": n / queue,
        "persist_queue_tasks_per_s": n_sql / pq,
        "huey_tasks_per_s": n_sql / hy,
        HEADLINE: rate / (n / aio),
        "eager_ratio_vs_aiojobs": aio / eager,
        "ratio_vs_asyncio_queue": rate / (n / queue),
        "ratio_vs_persist_queue": rate / (n_sql / pq),
        "ratio_vs_huey": rate / (n_sql / hy),
        "flushes_per_task": flushes / n,
        "fsyncs_per_task": fsyncs / n,
    }
    notes = [
        f"persist-queue and huey ran {n_sql:,} tasks (they are slow), pipelined from threads;"
        " their ratios compare tasks/s",
        "harnpool ratio = harnpool tasks/s / the row's tasks/s",
    ]
    return Result(rows=rows, metrics=metrics, notes=notes)


if __name__ == "__main__":
    _bench.main(NAME, __doc__, HEADLINE, run_once)
