"""A child process for test_registered_partials: submits partials of registered tasks, then hangs.

Usage: ``python _partial_child.py JOURNAL LEDGER``

It submits ``functools.partial(pack, ...)`` of the registered :func:`pack` (keywords only, and
a positional argument plus keywords) and appends ``acked KEY ID`` to LEDGER once each submit
returned and ``start KEY`` when a run begins; every run hangs, so the parent SIGKILLs it while
they run. The parent registers its own ``pack`` under the same name and resumes them.
"""

from __future__ import annotations

import functools
import os
import sys

import anyio

import harnpool

LEDGER_FD = -1


def note(*words: str) -> None:
    os.write(LEDGER_FD, (" ".join(words) + "\n").encode())


@harnpool.task(name="tests.partials.pack")
async def pack(parcel: int, *, size: str, dims: tuple[int, int] = (1, 1)) -> str:
    note("start", f"p{parcel}")
    await anyio.sleep_forever()
    return ""  # pragma: no cover - never reached


async def main(journal: str) -> None:
    async with harnpool.open_pool(journal, max_concurrent=2) as pool:
        first = await pool.submit(functools.partial(pack, size="large", dims=(2, 3)), 1, key="p1")
        note("acked", "p1", first)
        second = await pool.submit(functools.partial(pack, 2, size="small"), key="p2")
        note("acked", "p2", second)
        await anyio.sleep_forever()


if __name__ == "__main__":
    journal, ledger = sys.argv[1:3]
    LEDGER_FD = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    anyio.run(main, journal)
