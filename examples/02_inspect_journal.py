"""Operating on a journal from the command line: inspect, verify, compact, salvage,
cancel, fail and requeue.

A pool writes a small journal (finished, failed, interrupted and queued tasks);
then the ``harnpool`` commands look at it, check it, damage a copy and salvage
it, compact the original, and settle its tasks by hand: a poison task is
failed, a queued one cancelled, and the failed charge queued again. Each
command's output is printed as a shell session would show it.

Run it with ``python examples/02_inspect_journal.py [DIRECTORY]``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import tempfile

import anyio

import harnpool
from harnpool._cli import main as harnpool_cli


async def send_invoice(number: int) -> str:
    return f"invoice {number} sent"


async def charge_card(customer: str) -> None:
    raise ValueError(f"card declined for {customer}")


class Interrupted(Exception):
    """Stands in for a crash: leaving the block by an exception keeps tasks ``running``."""


async def write_journal(path: str) -> None:
    async with harnpool.open_pool(path, max_concurrent=2) as pool:
        ids: list[str] = [
            await pool.submit(send_invoice, n, key=f"invoice-{n}") for n in range(1, 4)
        ]
        ids.append(await pool.submit(charge_card, "ACME", key="charge-acme", priority=1))
        for task_id in ids:
            with contextlib.suppress(harnpool.TaskFailed):  # the declined card
                await pool.wait(task_id)

    started = anyio.Event()

    async def long_report() -> None:
        started.set()
        await anyio.sleep_forever()

    try:
        # One at a time: invoice-4 waits behind the report, queued when the pool stops.
        async with harnpool.open_pool(path, max_concurrent=1) as pool:
            await pool.submit(long_report, key="report-may", priority=5)
            await pool.submit(send_invoice, 4, key="invoice-4")
            await started.wait()
            raise Interrupted
    except Interrupted:
        pass


async def settle(path: str) -> None:
    """Reopen the pool: wait reports what the operator recorded; the requeued charge runs again."""
    print("\nreopening the pool:")
    async with harnpool.open_pool(path) as pool:
        for task_id in ("t5", "t6"):
            try:
                await pool.wait(task_id)
            except harnpool.TaskError as exc:
                print(f"  wait({task_id!r}) raises {type(exc).__name__}: {exc}")

        async def charge_card_again(customer: str) -> str:
            return f"charged {customer}"

        # Re-attach the requeued task by its key: same id, and it runs once more.
        task_id = await pool.submit(charge_card_again, "ACME", key="charge-acme")
        print(f"  wait({task_id!r}) -> {await pool.wait(task_id)!r}")


def run(*argv: str, expect: int) -> bool:
    """Run one command as ``harnpool`` would, print it and its output; True if as expected."""
    print(f"\n$ harnpool {shlex.join(argv)}", flush=True)
    code = harnpool_cli(list(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    if code != 0:
        print(f"(exit code {code})", flush=True)
    return code == expect


def main() -> int:
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="harnpool-cli-")
    os.makedirs(directory, exist_ok=True)
    os.chdir(directory)  # so the commands below show short paths
    print(f"working in {directory}")
    anyio.run(write_journal, "jobs.jsonl")

    results = [
        run("inspect", "jobs.jsonl", expect=0),
        run("inspect", "jobs.jsonl", "--status", "failed", "--json", expect=0),
        run("verify", "jobs.jsonl", expect=0),
    ]

    # A crash mid-write leaves a torn last line; a bad disk can damage one in the middle.
    shutil.copyfile("jobs.jsonl", "damaged.jsonl")
    with open("damaged.jsonl", "rb") as f:
        content = f.read().split(b"\n")
    content[2] = content[2].replace(b'"status"', b'"stat\xffus"')
    with open("damaged.jsonl", "wb") as f:
        f.write(b"\n".join(content) + b'{"kind":"task","id":"t7","se')
    results += [
        run("verify", "damaged.jsonl", expect=2),
        run("salvage", "damaged.jsonl", "--output", "salvaged.jsonl", expect=0),
        run("verify", "salvaged.jsonl", expect=0),
        # Offline compaction does what opening a pool does: the interrupted task is queued again.
        run("compact", "jobs.jsonl", expect=0),
        run("inspect", "jobs.jsonl", "--key", "report-*", expect=0),
        # An operator settles tasks without code; each change is all-or-nothing and durable.
        run("fail", "jobs.jsonl", "t5", "--reason", "crashes the worker", expect=0),
        run("cancel", "jobs.jsonl", "t6", expect=0),
        run("cancel", "jobs.jsonl", "t1", expect=4),  # finished: refused, nothing written
        run("requeue", "jobs.jsonl", "t4", "t99", expect=6),  # unknown id: nothing written
        run("requeue", "jobs.jsonl", "t4", expect=0),
        run("inspect", "jobs.jsonl", expect=0),
    ]
    anyio.run(settle, "jobs.jsonl")
    ok = all(results)
    print("\nOK" if ok else "\nFAILED: a command exited with an unexpected code")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
