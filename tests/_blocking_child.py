"""A child process for test_blocking_api: plain threads use a blocking pool; it keeps a ledger.

Usage: ``python _blocking_child.py JOURNAL LEDGER BACKEND COUNT``

Ledger lines (each one ``os.write`` to an ``O_APPEND`` file, so a SIGKILL cannot lose them):
``acked KEY ID`` once submit returned, ``start KEY`` when the function begins, ``result KEY VALUE``
once wait returned, ``all-acked`` once every thread has submitted. Tasks with an odd number hang;
the others finish. Four threads submit and wait at once, each for its share of the keys.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import anyio

import harnpool

LEDGER_FD = -1
THREADS = 4


def note(*words: str) -> None:
    os.write(LEDGER_FD, (" ".join(words) + "\n").encode())


async def work(key: str, n: int) -> int:
    note("start", key)
    if n % 2:
        await anyio.sleep_forever()
    return n * n


def client(pool: harnpool.BlockingPool, numbers: range, submitted: threading.Barrier) -> None:
    ids = {}
    for n in numbers:
        key = f"k{n}"
        ids[key] = pool.submit(work, key, n, key=key)
        note("acked", key, ids[key])
    if submitted.wait() == 0:
        note("all-acked")
    for n in numbers:
        if n % 2 == 0:
            key = f"k{n}"
            note("result", key, str(pool.wait(ids[key])))
    threading.Event().wait()  # the parent kills the process while the odd tasks hang


def main(journal: str, backend: Literal["asyncio", "trio"], count: int) -> None:
    submitted = threading.Barrier(THREADS)
    with (
        harnpool.open_blocking_pool(journal, backend=backend, max_concurrent=count) as pool,
        ThreadPoolExecutor(THREADS) as executor,
    ):
        clients = [
            executor.submit(client, pool, range(t, count, THREADS), submitted)
            for t in range(THREADS)
        ]
        for done in clients:
            done.result()


if __name__ == "__main__":
    journal, ledger, backend, count = sys.argv[1:5]
    LEDGER_FD = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    main(journal, "trio" if backend == "trio" else "asyncio", int(count))
