"""Crash and resume: a child process submits jobs and is killed with SIGKILL mid-way;
the journal is reopened, the work resumes on its own, and nothing that finished runs twice.

The job function is registered with ``harnpool.task``, so the journal holds its
name and arguments: the reopened pool needs nobody to submit anything again.

Run it with ``make demo`` or ``python examples/01_crash_resume.py [DIRECTORY]``.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import msgspec

import harnpool

JOBS = 12


class Report(msgspec.Struct, frozen=True):
    """What one job returns: typed, so it comes back as a Report after the crash too."""

    number: int
    square: int
    pid: int


@harnpool.task(name="demo.process")
def process(directory: str, number: int) -> Report:
    """The work: log the start, take a while, log the end.

    A plain function: the pool runs it in a worker thread, so its blocking file
    writes and sleep never hold up the event loop.
    """
    log = Path(directory, "runs.log")
    with log.open("a") as f:  # a line per event, so the parent can count runs
        f.write(f"start {number} {os.getpid()}\n")
    time.sleep(0.15)
    with log.open("a") as f:
        f.write(f"done {number} {os.getpid()}\n")
    return Report(number=number, square=number * number, pid=os.getpid())


async def submit_everything(directory: str) -> None:
    """The child: submit every job, say so, and wait for the results (it is killed first)."""
    async with harnpool.open_pool(os.path.join(directory, "jobs.jsonl"), max_concurrent=2) as pool:
        ids = [
            await pool.submit(process, directory, n, key=f"job-{n}", priority=-n)
            for n in range(JOBS)
        ]
        print("submitted", flush=True)
        for task_id in ids:
            await pool.wait(task_id)


async def resume(directory: str) -> tuple[set[str], dict[str, Report]]:
    """Reopen the journal: show what survived, and wait while the rest runs on its own."""
    async with harnpool.open_pool(os.path.join(directory, "jobs.jsonl"), max_concurrent=2) as pool:
        report = pool.recovery
        print(f"\nreopened {report.path}")
        print(f"  tasks in the journal:       {report.tasks}")
        print(f"  finished before the crash:  {report.finished}")
        requeued = ", ".join(report.requeued)
        print(f"  interrupted while running:  {len(report.requeued)} (queued again: {requeued})")
        print(f"  resumed without resubmit:   {len(report.resumed)}")
        finished = {
            info.key or info.id for info in pool.tasks() if info.status is harnpool.Status.COMPLETED
        }
        results = {info.key or info.id: await pool.wait(info.id) for info in pool.tasks()}
        return finished, results


def run_child(directory: str) -> None:
    anyio.run(submit_everything, directory)


def number(key: str) -> int:
    return int(key.removeprefix("job-"))


def log_lines(directory: str) -> list[tuple[str, int]]:
    path = Path(directory, "runs.log")
    if not path.exists():
        return []
    return [
        (word, int(n))
        for word, n, _pid in (line.split() for line in path.read_text().split("\n") if line)
    ]


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        run_child(sys.argv[2])
        return 0
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="harnpool-demo-")
    os.makedirs(directory, exist_ok=True)
    print(f"working in {directory}")

    # 1. A child process submits the jobs; we kill it once a few have finished.
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", directory], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "submitted"
    deadline = time.monotonic() + 30
    while sum(word == "done" for word, _ in log_lines(directory)) < 4:
        if time.monotonic() > deadline or child.poll() is not None:
            print("the child ended before it could be killed", file=sys.stderr)
            return 1
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    print(f"child {child.pid} killed with SIGKILL")

    # 2. Reopen: the pool finds the unfinished jobs' function by its registered
    #    name and runs them on its own; finished ones keep their stored result.
    finished_before, results = anyio.run(resume, directory)
    starts = collections.Counter(n for word, n in log_lines(directory) if word == "start")

    print(f"\nresumed: {len(results)} results")
    for report in results.values():
        print(f"  job-{report.number:<2} -> {report.square:>3}  (ran in pid {report.pid})")
    rerun_finished = [key for key in finished_before if starts[number(key)] > 1]
    interrupted = [f"job-{n}" for n in range(JOBS) if starts[n] > 1]
    kept = len(finished_before) - len(rerun_finished)
    print(f"\nfinished before the crash and not run again: {kept}")
    print(f"interrupted mid-run and run again (at-least-once): {', '.join(interrupted)}")
    ok = (
        not rerun_finished
        and len(results) == JOBS
        and all(isinstance(r, Report) for r in results.values())
    )
    print("OK: nothing acknowledged was lost, nothing finished ran twice" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
