"""Retries with backoff, per-attempt timeouts, and waiting with a timeout.

- ``retries=`` and ``retry_on=`` per task (or as pool defaults), with the pool's
  ``retry_backoff=``: each failed attempt is journaled and retried after an
  exponentially growing, jittered delay; ``info(task_id).attempts`` counts them.
- ``timeout=`` seconds per attempt: an attempt past it is cancelled and counts as
  a failed attempt (a ``TimeoutError``).
- ``wait(task_id, timeout=...)`` raises ``harnpool.WaitTimeout`` and leaves the
  task running.

Run it with ``python examples/04_retries_and_timeouts.py [DIRECTORY]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import anyio

import harnpool

CALLS: dict[str, list[float]] = {}


async def fetch(url: str, failures: int) -> str:
    """Fails with ConnectionError ``failures`` times, then succeeds."""
    calls = CALLS.setdefault(url, [])
    calls.append(time.monotonic())
    if len(calls) <= failures:
        raise ConnectionError(f"{url}: connection reset (attempt {len(calls)})")
    return f"{url}: 200 OK"


async def parse(text: str) -> int:
    raise ValueError(f"not a number: {text!r}")


async def hang() -> None:
    await anyio.sleep_forever()


async def main(directory: str) -> int:
    journal = os.path.join(directory, "retries.jsonl")
    # Backoff: ~0.05 s before the 1st retry, 0.1 s before the 2nd, ... (x 0.5-1 jitter).
    async with harnpool.open_pool(journal, max_concurrent=4, retry_backoff=0.05) as pool:
        flaky = await pool.submit(fetch, "/a", 2, retries=3, retry_on=[ConnectionError])
        down = await pool.submit(fetch, "/b", 99, retries=2, retry_on=[ConnectionError])
        wrong = await pool.submit(parse, "x", retries=3, retry_on=[ConnectionError])
        slow = await pool.submit(hang, retries=1, timeout=0.1)

        result, attempts = await pool.wait(flaky), pool.info(flaky).attempts
        print(f"flaky: {result!r} after {attempts} attempts")
        gaps = [round(b - a, 3) for a, b in zip(CALLS["/a"], CALLS["/a"][1:], strict=False)]
        print(f"  seconds between its attempts (backoff): {gaps}")
        failures: dict[str, tuple[int, str]] = {}
        for name, task_id in [("down", down), ("wrong", wrong), ("slow", slow)]:
            try:
                await pool.wait(task_id)
            except harnpool.TaskFailed as exc:
                failures[name] = (pool.info(task_id).attempts, exc.error_type)
                print(f"{name}: failed, attempts={failures[name][0]}: {exc.error_type}")
                print(f"  {exc.error_message}")

        gate = anyio.Event()

        async def report() -> str:
            await gate.wait()
            return "report ready"

        long = await pool.submit(report)
        try:
            await pool.wait(long, timeout=0.05)
            timed_out = False
        except harnpool.WaitTimeout as exc:  # also a TimeoutError
            timed_out = True
            print(f"wait(timeout=0.05): {exc}; the task is still {pool.info(long).status.value}")
        gate.set()
        late = await pool.wait(long)
        print(f"waiting again: {late!r}")

    expected = {
        "down": (3, "builtins.ConnectionError"),  # 1 attempt + 2 retries, then it gave up
        "wrong": (1, "builtins.ValueError"),  # not in retry_on: no retry
        "slow": (2, "builtins.TimeoutError"),  # both attempts ran past timeout=0.1
    }
    if failures != expected:
        print(f"FAILED: expected {expected}, got {failures}")
        return 1
    if result != "/a: 200 OK" or attempts != 3 or not timed_out or late != "report ready":
        print("FAILED: retry or wait(timeout=...) did not behave as documented")
        return 1
    print("OK: retried what retry_on lists, timed out attempts, and wait gave up alone")
    return 0


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="harnpool-retry-")
    os.makedirs(directory, exist_ok=True)
    print(f"working in {directory}")
    sys.exit(anyio.run(main, directory))
