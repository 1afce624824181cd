"""P5: idle dispatch latency, p50/p99 from ``submit`` returning to the task starting.

A pool with one worker and nothing else to do receives one no-op task at a
time. The time is read right after ``await pool.submit(probe)`` returns and
again as the first thing ``probe`` does; the next submit waits until the probe
has started, so the worker is idle each time (the previous task's ``completed``
record rides with the next submit's flush, as it would in a quiet service).
"""

from __future__ import annotations

import statistics
import time

import _bench
import anyio
from _bench import Config, Result

import harnpool

NAME = "p5_latency"
HEADLINE = "p99_ms"


def _sizes(cfg: Config) -> int:
    return 100 if cfg.quick else 20_000


async def _harnpool(cfg: Config, n: int) -> list[float]:
    path = cfg.scratch("p5-harnpool") / "pool.jsonl"
    samples: list[float] = []
    async with harnpool.open_pool(path, max_concurrent=1) as pool:
        for _ in range(n):
            started = anyio.Event()
            at: list[float] = []

            async def probe(at: list[float] = at, started: anyio.Event = started) -> None:
                at.append(time.perf_counter())
                started.set()

            await pool.submit(probe)
            returned = time.perf_counter()
            await started.wait()
            samples.append(at[0] - returned)
    return samples


def run_once(cfg: Config) -> Result:
    n = _sizes(cfg)
    samples = anyio.run(_harnpool, cfg, n, backend="asyncio")
    ms = sorted(s * 1e3 for s in samples)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    p50, p99 = cuts[49], cuts[98]
    rows = [
        {
            "contender": "harnpool, one idle worker",
            "samples": n,
            "p50 ms": p50,
            "p99 ms": p99,
            "max ms": ms[-1],
        }
    ]
    metrics = {"samples": n, "p50_ms": p50, HEADLINE: p99, "max_ms": ms[-1]}
    return Result(rows=rows, metrics=metrics)


if __name__ == "__main__":
    _bench.main(NAME, __doc__, HEADLINE, run_once)
