"""Queue strategies, priority aging, and retention of finished tasks.

- ``strategy=``: ``"priority"`` (default: higher first, then submission order),
  ``"fifo"``, ``"lifo"``, and ``"fair"``: round robin between ``group=`` labels,
  so one busy tenant cannot starve the others.
- ``aging=`` seconds: every that many seconds a task waits counts as one more
  priority point, so a low-priority task cannot wait forever.
- ``keep_finished=`` (and ``keep_finished_for=`` seconds): opening the pool drops
  older finished tasks (``pool.recovery.dropped_finished``), and so does an open
  pool each time a task finishes (``pool.statistics().dropped_finished``); their
  keys stop deduplicating.

Run it with ``python examples/06_strategies_and_retention.py [DIRECTORY]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence

import anyio

import harnpool


async def hold(started: anyio.Event, gate: anyio.Event) -> None:
    started.set()
    await gate.wait()


async def record(label: str, order: list[str]) -> None:
    order.append(label)


async def run_order(
    path: str,
    strategy: harnpool.Strategy,
    jobs: Sequence[tuple[str, int, str | None]],
    *,
    aging: float | None = None,
    pause: float = 0.0,
) -> list[str]:
    """Queue ``jobs`` (label, priority, group) behind a held task; return the run order.

    ``pause`` seconds pass after the first job is queued, so that it ages.
    """
    order: list[str] = []
    started, gate = anyio.Event(), anyio.Event()
    async with harnpool.open_pool(path, max_concurrent=1, strategy=strategy, aging=aging) as pool:
        await pool.submit(hold, started, gate)
        await started.wait()  # max_concurrent=1: everything below queues up
        for i, (label, priority, group) in enumerate(jobs):
            await pool.submit(record, label, order, priority=priority, group=group)
            if i == 0 and pause:
                await anyio.sleep(pause)
        gate.set()
    settings = f"strategy={strategy!r}" + ("" if aging is None else f", aging={aging}")
    print(f"  {settings:<35} {' '.join(order)}")
    return order


async def main(directory: str) -> int:
    def path(name: str) -> str:
        return os.path.join(directory, f"{name}.jsonl")

    abc = [("a:0", 0, None), ("b:5", 5, None), ("c:1", 1, None)]
    tenants = [(f"big{n}", 0, "big") for n in range(1, 5)] + [("small1", 0, "small")]
    tenants.append(("small2", 0, "small"))
    aged = [("old:0", 0, None), ("new:3", 3, None)]
    print("run order of tasks (label:priority, or tenant) queued behind a busy worker:")
    orders = {
        "priority": await run_order(path("priority"), "priority", abc),
        "fifo": await run_order(path("fifo"), "fifo", abc),
        "lifo": await run_order(path("lifo"), "lifo", abc),
        "unfair": await run_order(path("unfair"), "priority", tenants),
        "fair": await run_order(path("fair"), "fair", tenants),
        "no aging": await run_order(path("no-aging"), "priority", aged, pause=0.3),
        "aging": await run_order(path("aging"), "priority", aged, aging=0.05, pause=0.3),
    }
    expected = {
        "priority": ["b:5", "c:1", "a:0"],
        "fifo": ["a:0", "b:5", "c:1"],
        "lifo": ["c:1", "b:5", "a:0"],
        "unfair": ["big1", "big2", "big3", "big4", "small1", "small2"],
        "fair": ["big1", "small1", "big2", "small2", "big3", "big4"],
        "no aging": ["new:3", "old:0"],
        "aging": ["old:0", "new:3"],  # waited 0.3 s = 6 points at aging=0.05
    }
    if orders != expected:
        print(f"FAILED: expected {expected}")
        return 1

    # Retention: five finished reports; reopening with keep_finished=2 keeps the newest two.
    runs: list[str] = []
    async with harnpool.open_pool(path("retention")) as pool:
        for n in range(1, 6):
            await pool.submit(record, f"report-{n}", runs, key=f"report-{n}")
    async with harnpool.open_pool(path("retention"), keep_finished=2) as pool:
        dropped, kept = pool.recovery.dropped_finished, [t.key for t in pool.tasks()]
        print(f"\nreopened with keep_finished=2: dropped_finished={dropped}, kept {kept}")
        await pool.submit(record, "report-1", runs, key="report-1")  # forgotten: runs again
        await pool.submit(record, "report-5", runs, key="report-5")  # kept: deduplicated
    print(f"runs: {runs}")
    if dropped != 3 or kept != ["report-4", "report-5"] or runs[5:] != ["report-1"]:
        print("FAILED: retention did not keep the newest two finished tasks")
        return 1
    print("OK: each strategy ordered the queue as documented, and retention dropped the oldest")
    return 0


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="harnpool-order-")
    os.makedirs(directory, exist_ok=True)
    print(f"working in {directory}")
    sys.exit(anyio.run(main, directory))
