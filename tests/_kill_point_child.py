"""A child process for test_kill_points: it runs a pool and keeps a ledger outside the journal.

Usage: ``python _kill_point_child.py JOURNAL LEDGER MODE COUNT``

Ledger lines (each one ``os.write`` to an ``O_APPEND`` file, so a SIGKILL cannot lose them):
``acked KEY ID`` once submit returned, ``start KEY`` when the function begins, ``result KEY VALUE``
once wait returned. MODE says which tasks hang so the parent can kill at a chosen point:
``hang-all`` (every task hangs), ``hang-odd`` (odd-numbered tasks hang), ``flow`` (none hang).
"""

from __future__ import annotations

import os
import sys

import anyio

import harnpool

LEDGER_FD = -1


def note(*words: str) -> None:
    os.write(LEDGER_FD, (" ".join(words) + "\n").encode())


async def work(key: str, n: int, hang: bool) -> dict[str, int | str]:
    note("start", key)
    if hang:
        await anyio.sleep_forever()
    return {"key": key, "square": n * n}


async def main(journal: str, mode: str, count: int) -> None:
    async with harnpool.open_pool(journal, max_concurrent=3) as pool:
        ids: dict[str, str] = {}
        for n in range(count):
            key = f"k{n}"
            hang = mode == "hang-all" or (mode == "hang-odd" and n % 2 == 1)
            ids[key] = await pool.submit(work, key, n, hang, key=key, priority=n % 3)
            note("acked", key, ids[key])
        note("all-acked")
        async with anyio.create_task_group() as tg:
            for key, task_id in ids.items():
                tg.start_soon(wait_one, pool, key, task_id)


async def wait_one(pool: harnpool.Pool, key: str, task_id: str) -> None:
    result = await pool.wait(task_id)
    note("result", key, str(result["square"]))


if __name__ == "__main__":
    journal, ledger, mode, count = sys.argv[1:5]
    LEDGER_FD = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    anyio.run(main, journal, mode, int(count))
