"""Registered tasks resume on their own: no resubmission after a crash.

``@harnpool.task(name=...)`` stores a task by its function's name with its
arguments (msgspec-encoded, here a typed ``Parcel`` struct); keyword arguments
go through ``functools.partial``, and are stored with them. A child process
submits parcels and is killed with SIGKILL mid-way; the journal is then reopened
*without submitting anything*, and the unfinished parcels run by themselves.

Run it with ``python examples/03_registered_tasks.py [DIRECTORY]``.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

import harnpool

PARCELS = 6


class Parcel(msgspec.Struct, frozen=True):
    number: int
    destination: str


class Label(msgspec.Struct, frozen=True):
    parcel: int
    text: str
    pid: int


def note(directory: str, line: str) -> None:
    with Path(directory, "runs.log").open("a") as log:
        log.write(line + "\n")


@harnpool.task(name="shipping.print_label")  # a stable name: it survives renaming the function
def print_label(directory: str, parcel: Parcel, *, copies: int = 1) -> Label:
    """A plain function (run in a worker thread). ``parcel`` is decoded as a Parcel."""
    note(directory, f"start {parcel.number}")
    time.sleep(0.15)
    note(directory, f"done {parcel.number}")
    text = f"{copies} copies for {parcel.destination}"
    return Label(parcel=parcel.number, text=text, pid=os.getpid())


async def child(directory: str) -> None:
    async with harnpool.open_pool(Path(directory, "labels.jsonl"), max_concurrent=2) as pool:
        for n in range(PARCELS):
            parcel = Parcel(number=n, destination=f"depot {n % 3}")
            # A partial of a registered function stays registered, keywords and all.
            label = functools.partial(print_label, copies=copies(n))
            await pool.submit(label, directory, parcel, key=f"parcel-{n}")
        print("submitted", flush=True)
        await anyio.sleep_forever()  # the parent kills us while tasks run


def copies(n: int) -> int:
    return n % 3 + 1


def logged(directory: str, word: str) -> set[int]:
    log = Path(directory, "runs.log")
    lines = log.read_text().splitlines() if log.exists() else []
    return {int(line.split()[1]) for line in lines if line.startswith(word)}


async def reopen(directory: str) -> tuple[list[Label], bool]:
    async with harnpool.open_pool(Path(directory, "labels.jsonl"), max_concurrent=2) as pool:
        report = pool.recovery
        print(f"reopened: {report.tasks} tasks, {report.finished} finished before the crash")
        print(f"  interrupted while running, queued again: {', '.join(report.requeued)}")
        print(f"  pool.recovery.resumed (running now, nothing submitted): {report.resumed}")
        labels = [await pool.wait(task_id) for task_id in report.resumed]
        for label in labels:
            print(f"  parcel {label.parcel}: {label.text}  (pid {label.pid})")
        unstorable: Any = object()  # as untyped code might pass it
        try:  # arguments that cannot be stored are refused before anything is written
            await pool.submit(print_label, directory, unstorable)
        except harnpool.ArgumentsNotEncodableError as exc:
            print(f"refused at submit, nothing written: {exc}")
            return labels, len(pool.tasks()) == report.tasks
    return labels, False


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        anyio.run(child, sys.argv[2])
        return 0
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="harnpool-tasks-")
    os.makedirs(directory, exist_ok=True)
    print(f"working in {directory}")

    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", directory], stdout=subprocess.PIPE, text=True
    )
    if proc.stdout is None or proc.stdout.readline().strip() != "submitted":
        print("FAILED: the child did not submit")
        return 1
    deadline = time.monotonic() + 30
    while len(logged(directory, "done")) < 2:  # kill it once two labels are printed
        if time.monotonic() > deadline or proc.poll() is not None:
            print("FAILED: the child ended before it could be killed")
            return 1
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    print(f"child {proc.pid} killed with SIGKILL after {len(logged(directory, 'done'))} labels\n")

    labels, refused = anyio.run(reopen, directory)
    here = bool(labels) and all(
        isinstance(lb, Label)
        and lb.pid == os.getpid()
        and lb.text.startswith(f"{copies(lb.parcel)} copies")  # its keyword came back
        for lb in labels
    )
    missing = set(range(PARCELS)) - logged(directory, "done")
    if not here or missing or not refused:
        print(f"FAILED: resumed here: {here}, never printed: {missing}, refused: {refused}")
        return 1
    print(f"OK: every parcel was labelled; {len(labels)} resumed without resubmitting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
