"""A child for the locking tests: hold a pool open, or try to open one and say what happened.

``python _crash_lock.py hold JOURNAL`` opens the pool, prints ``ready``, and keeps
it open until its stdin closes (or it is killed). ``python _crash_lock.py try
JOURNAL`` tries to open the pool and prints, as JSON, whether it was locked, the
pid the error named, and the error's message. ``python _crash_lock.py cancel
JOURNAL WHEN`` leaves a pool's block by cancelling an enclosing scope, right
after a submit (``WHEN`` is ``submitted``) or once the task runs (``running``),
then opens the journal again in this process and prints what happened as JSON;
the parent gives it a deadline, since a pool that never lets go would hang.
"""

from __future__ import annotations

import sys

import anyio
import msgspec

import harnpool


async def hold(journal: str) -> None:
    async with harnpool.open_pool(journal):
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await anyio.to_thread.run_sync(sys.stdin.read)


async def attempt(journal: str) -> None:
    try:
        async with harnpool.open_pool(journal):
            outcome: dict[str, object] = {"locked": False}
    except harnpool.JournalLockedError as exc:
        outcome = {"locked": True, "pid": exc.pid, "message": str(exc)}
    # The last line: structlog's events may come before it on stdout.
    sys.stdout.write("\n" + msgspec.json.encode(outcome).decode() + "\n")


async def cancel(journal: str, when: str) -> None:
    started = anyio.Event()

    async def stuck() -> None:
        started.set()
        await anyio.Event().wait()

    with anyio.CancelScope() as scope:
        async with harnpool.open_pool(journal) as pool:
            task_id = await pool.submit(stuck, key="stuck")
            if when == "running":
                await started.wait()
            scope.cancel()
            await pool.wait(task_id)
    # Opening again in this process proves the block let go of the lock.
    async with harnpool.open_pool(journal) as pool:
        statuses = [(t.id, str(t.status)) for t in pool.tasks()]
    outcome = {"cancelled": scope.cancelled_caught, "task": task_id, "reopened": statuses}
    sys.stdout.write("\n" + msgspec.json.encode(outcome).decode() + "\n")


def main(argv: list[str]) -> None:
    command, journal, *rest = argv
    if command == "cancel":
        anyio.run(cancel, journal, rest[0])
    else:
        anyio.run(hold if command == "hold" else attempt, journal)


if __name__ == "__main__":
    main(sys.argv[1:])
