"""The same pool under trio.

harnpool is written on anyio, so ``trio.run(main)`` (or
``anyio.run(main, backend="trio")``) runs it unchanged, and task functions may
use trio's own API. This runs async and plain tasks, a retry, a wait timeout, a
cancel, and a registered task that resumes after the block is left by an error.

Run it with ``python examples/08_trio.py [DIRECTORY]``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile

import trio

import harnpool

ATTEMPTS: list[int] = []


async def fetch(page: int) -> str:
    await trio.sleep(0.01)  # trio's own sleep: this only works under trio
    return f"page {page} fetched"


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]  # a plain function: runs in a thread


async def flaky() -> int:
    ATTEMPTS.append(1)
    if len(ATTEMPTS) < 2:
        raise ConnectionError("try again")
    return len(ATTEMPTS)


@harnpool.task(name="examples.trio.archive")
async def archive(month: str) -> str:
    await trio.sleep(0.01)
    return f"{month} archived"


class Interrupted(Exception):
    """Leaves the pool block the way a crash leaves the journal: tasks not finished."""


async def main(directory: str) -> int:
    path = os.path.join(directory, "trio.jsonl")
    async with harnpool.open_pool(path, max_concurrent=3, retry_backoff=0.01) as pool:
        pages = [await pool.submit(fetch, n) for n in range(3)]
        digest = await pool.submit(checksum, b"harnpool")
        retried = await pool.submit(flaky, retries=2)
        for task_id in pages:
            print(await pool.wait(task_id))
        print(f"checksum from a worker thread: {await pool.wait(digest)}")
        print(f"flaky succeeded on attempt {await pool.wait(retried)}")

        stuck = await pool.submit(trio.sleep_forever)
        try:
            await pool.wait(stuck, timeout=0.05)
        except harnpool.WaitTimeout as exc:
            print(f"WaitTimeout: {exc}")
        cancelled = await pool.cancel(stuck)
        print(f"cancel: {cancelled}, status {pool.info(stuck).status.value}")

    try:
        async with harnpool.open_pool(path) as pool:
            await pool.submit(trio.sleep_forever)  # occupies the only worker
            await pool.submit(archive, "2026-04", key="archive-2026-04")
            raise Interrupted
    except Interrupted:
        print("left the block by an exception with a registered task queued")
    async with harnpool.open_pool(path) as pool:
        resumed = pool.recovery.resumed
        print(f"reopened under trio: resumed {resumed}")
        results = [await pool.wait(task_id) for task_id in resumed]
        print(f"  {results}")

    if not (cancelled and len(ATTEMPTS) == 2 and "2026-04 archived" in results):
        print("FAILED: the pool did not behave under trio as under asyncio")
        return 1
    print("OK: the pool ran under trio")
    return 0


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="harnpool-trio-")
    os.makedirs(directory, exist_ok=True)
    print(f"working in {directory}")
    sys.exit(trio.run(main, directory))
