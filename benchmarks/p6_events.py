"""P6: what harnpool's structlog events cost on the P2 workload.

The P2 workload (64 submitters, each ``submit`` then ``wait`` on no-op tasks,
durable end to end) runs in three modes, interleaved round by round so machine
noise falls on all of them alike:

- ``no events``: harnpool's ``emit`` replaced by a no-op, the floor;
- ``unconfigured``: as shipped, in an application that never configured
  structlog (harnpool then builds no event at all);
- ``configured, WARNING``: structlog configured with a filtering bound logger
  at WARNING, as an application that logs only warnings would; the workload's
  info and debug events are dropped by the level check.

The order of the modes rotates from round to round. The figure is process CPU
time per task (the journal's writer thread included), each mode's median over
the floor's. On a shared machine that difference is noisy (±10%), so the
headline figures are estimates from steadier parts: the events one task emits
(counted) times the cost of one emit in that mode (timed alone), over the CPU
time per task without events.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import _bench
import anyio
import structlog
from _bench import Config, Result

import harnpool
from harnpool import _pool

NAME = "p6_events"
HEADLINE = "overhead_unconfigured_pct"
SUBMITTERS = 64
_emitted = 0


@contextmanager
def _no_events() -> Iterator[None]:
    namespace = vars(_pool)
    real = namespace["emit"]

    def discard(level: str, event: str, /, **fields: object) -> None:
        global _emitted
        _emitted += 1

    namespace["emit"] = discard
    try:
        yield
    finally:
        namespace["emit"] = real


@contextmanager
def _unconfigured() -> Iterator[None]:
    structlog.reset_defaults()
    yield


@contextmanager
def _warning_level() -> Iterator[None]:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        processors=[structlog.processors.KeyValueRenderer()],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    try:
        yield
    finally:
        structlog.reset_defaults()


MODES: dict[str, Callable[[], AbstractContextManager[None]]] = {
    "no events": _no_events,
    "unconfigured": _unconfigured,
    "configured, WARNING": _warning_level,
}


async def _workload(cfg: Config, n: int) -> float:
    """Run n tasks through P2's pattern; return CPU seconds per task."""
    path = cfg.scratch("p6") / "pool.jsonl"
    per = n // SUBMITTERS
    async with harnpool.open_pool(path, max_concurrent=SUBMITTERS) as pool:

        async def submitter() -> None:
            for _ in range(per):
                await pool.wait(await pool.submit(_bench.noop))

        start = time.process_time()
        async with anyio.create_task_group() as tg:
            for _ in range(SUBMITTERS):
                tg.start_soon(submitter)
        return (time.process_time() - start) / (per * SUBMITTERS)


def _emit_cost(calls: int) -> float:
    """Seconds of one emit of a task event, as the pool makes it, in the current setting."""
    emit = vars(_pool)["emit"]
    start = time.perf_counter()
    for _ in range(calls):
        emit("debug", "task.started", pool="p", task_id="t1", key=None)
    return (time.perf_counter() - start) / calls


def run_once(cfg: Config) -> Result:
    n, rounds = (640, 1) if cfg.quick else (10_240, 6)
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    order = list(MODES)
    for round_ in range(rounds):
        # A different mode goes first each round, so drift in the process favours none.
        for mode in order[round_ % len(order) :] + order[: round_ % len(order)]:
            with MODES[mode]():
                cpu[mode].append(anyio.run(_workload, cfg, n, backend="asyncio"))
    global _emitted
    _emitted = 0
    with _no_events():
        anyio.run(_workload, cfg, n, backend="asyncio")
    per_task = _emitted / n
    calls = 2_000 if cfg.quick else 200_000
    emit_cost: dict[str, float] = {}
    for mode in ("unconfigured", "configured, WARNING"):
        with MODES[mode]():
            emit_cost[mode] = _emit_cost(calls)
    floor = statistics.median(cpu["no events"])
    medians = {mode: statistics.median(values) for mode, values in cpu.items()}
    rows: list[_bench.Row] = [
        {
            "mode": mode,
            "tasks": n * rounds,
            "cpu µs/task": medians[mode] * 1e6,
            "overhead %": (medians[mode] / floor - 1) * 100,
            "µs/emit": emit_cost.get(mode, 0.0) * 1e6,
            "estimated %": per_task * emit_cost.get(mode, 0.0) / floor * 100,
        }
        for mode in MODES
    ]
    metrics = {
        "tasks_per_mode": n * rounds,
        "cpu_us_per_task_no_events": floor * 1e6,
        "cpu_us_per_task_unconfigured": medians["unconfigured"] * 1e6,
        "cpu_us_per_task_warning": medians["configured, WARNING"] * 1e6,
        "measured_overhead_unconfigured_pct": (medians["unconfigured"] / floor - 1) * 100,
        "measured_overhead_warning_pct": (medians["configured, WARNING"] / floor - 1) * 100,
        "events_per_task": per_task,
        "emit_us_unconfigured": emit_cost["unconfigured"] * 1e6,
        "emit_us_warning": emit_cost["configured, WARNING"] * 1e6,
        # events per task x the cost of one event, over the CPU per task without events:
        # steadier than the difference of two noisy end-to-end figures
        HEADLINE: per_task * emit_cost["unconfigured"] / floor * 100,
        "overhead_warning_pct": per_task * emit_cost["configured, WARNING"] / floor * 100,
    }
    notes = [
        f"{rounds} interleaved rounds of {n:,} tasks per mode; medians of CPU time per task",
        f"{per_task:.2f} events per task; 'estimated %' = events/task x µs/emit / µs/task with no "
        "events (the end-to-end 'overhead %' is within this machine's noise)",
    ]
    return Result(rows=rows, metrics=metrics, notes=notes)


if __name__ == "__main__":
    _bench.main(NAME, __doc__, HEADLINE, run_once)
