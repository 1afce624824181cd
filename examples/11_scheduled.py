"""Delayed tasks and periodic tasks.

- ``submit(..., delay=seconds)`` (or ``run_at=`` an aware datetime) queues a task
  that does not start before its due time; ``info(task_id).not_before`` shows it,
  and the journal keeps it across a restart.
- ``pool.schedule(name, fn, every=...)`` (or ``cron="*/5 * * * *"`` with
  ``harnpool[cron]``) runs a registered function at every slot while the pool is
  open. Each slot is one task keyed ``name@<slot>``, so it fires once; the
  function receives the slot, an aware UTC datetime.
- Declared again after a restart, a schedule catches up on the slots it missed
  (``catch_up="latest"``, the default: the newest one only).

Run it with ``python examples/11_scheduled.py [DIRECTORY]``.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import time

import anyio

import harnpool

BEATS: list[datetime.datetime] = []
THREE_BEATS: list[anyio.Event] = []


@harnpool.task(name="examples.remind")
async def remind(who: str) -> float:
    """Returns when it started."""
    return time.time()


@harnpool.task(name="examples.heartbeat")
async def heartbeat(slot: datetime.datetime) -> None:
    BEATS.append(slot)
    if len(BEATS) == 3:
        THREE_BEATS[0].set()


async def main(directory: str) -> int:
    journal = os.path.join(directory, "scheduled.jsonl")
    THREE_BEATS.append(anyio.Event())
    async with harnpool.open_pool(journal, max_concurrent=2) as pool:
        reminder = await pool.submit(remind, "ada", delay=0.3)
        due = pool.info(reminder).not_before
        assert due is not None
        print(f"reminder queued, due in {due - time.time():.1f} s")

        await pool.schedule("heartbeat", heartbeat, every=0.2)
        started = await pool.wait(reminder)
        print(f"reminder started {1000 * (started - due):.1f} ms after its due time")
        with anyio.fail_after(10):
            await THREE_BEATS[0].wait()
        pool.unschedule("heartbeat")
        print("heartbeat slots:", ", ".join(slot.strftime("%S.%f")[:-5] for slot in BEATS[:3]))
    last = max(BEATS)

    # While no pool runs, two or more slots pass.
    await anyio.sleep(max(0.0, last.timestamp() + 0.5 - time.time()))
    async with harnpool.open_pool(journal) as pool:
        caught = await pool.schedule("heartbeat", heartbeat, every=0.2)
        pool.unschedule("heartbeat")
        keys = [pool.info(task_id).key for task_id in caught]
        print(f"reopened: caught up on {len(caught)} missed slot: {keys}")

    if started < due or len(set(BEATS)) != len(BEATS) or len(caught) != 1:
        print("FAILED: a task started early, a slot fired twice, or the catch-up was wrong")
        return 1
    print("OK: the reminder waited for its time and each slot fired once")
    return 0


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="harnpool-sched-")
    sys.exit(anyio.run(main, directory))
