"""A child process for test_recoveries: registered tasks that SIGKILL their own process.

Usage: ``python _recovery_child.py JOURNAL RUNS MODE BACKEND MAX_RECOVERIES``

MODE ``poison`` submits :func:`poison` (it kills its process every time it runs), ``flaky``
submits :func:`flaky` with ``retries=1`` (its first run kills its process once its ``running``
record is durable, its second raises, its third returns), and ``reopen`` submits nothing: the
registered tasks resume on their own. Every run of a task appends a line to the file RUNS.
MAX_RECOVERIES is an int, ``none``, or ``default`` (the argument is not passed). If the child
survives, it prints one JSON object: the ids ``pool.recovery.crash_looped`` lists, and for every
task its ``recoveries`` and what ``wait`` gave (``["completed", value]`` or ``["failed",
error_type, error_message]``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec

import harnpool

RUNS = Path()
JOURNAL = Path()


def _run_number() -> int:
    with RUNS.open("a") as f:
        f.write("run\n")
    return len(RUNS.read_text().splitlines())


def _kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@harnpool.task
async def poison(tag: str) -> str:
    _run_number()
    _kill_myself()
    return tag  # pragma: no cover - never reached


async def _running_record_is_durable() -> None:
    """Poll the journal until it holds this task's ``running`` record (at most 10 s)."""
    with anyio.fail_after(10):
        # The journal's writer thread changes the file: no event to wait on here.
        while b'"status":"running"' not in await anyio.Path(JOURNAL).read_bytes():  # noqa: ASYNC110
            await anyio.sleep(0.005)


@harnpool.task
async def flaky(tag: str) -> str:
    run = _run_number()
    if run == 1:
        await _running_record_is_durable()  # so the crash is a journaled, interrupted attempt
        _kill_myself()
    if run == 2:
        raise ValueError(f"run {run} of {tag} failed")
    return f"{tag} done on run {run}"


async def main(mode: str, limit: str) -> None:
    options: dict[str, Any] = {"retry_backoff": 0.0}
    if limit != "default":
        options["max_recoveries"] = None if limit == "none" else int(limit)
    async with harnpool.open_pool(JOURNAL, **options) as pool:
        if mode == "poison":
            await pool.wait(await pool.submit(poison, "p", key="poison"))
        elif mode == "flaky":
            await pool.wait(await pool.submit(flaky, "f", key="flaky", retries=1))
        outcomes: dict[str, list[Any]] = {}
        recoveries: dict[str, int] = {}
        for info in pool.tasks():
            try:
                outcomes[info.id] = ["completed", await pool.wait(info.id)]
            except harnpool.TaskFailed as exc:
                outcomes[info.id] = ["failed", exc.error_type, exc.error_message]
            recoveries[info.id] = pool.info(info.id).recoveries
        report = {
            "crash_looped": list(pool.recovery.crash_looped),
            "outcomes": outcomes,
            "recoveries": recoveries,
        }
    sys.stdout.write(msgspec.json.encode(report).decode() + "\n")


if __name__ == "__main__":
    journal, runs, mode, backend, limit = sys.argv[1:6]
    JOURNAL, RUNS = Path(journal), Path(runs)
    anyio.run(main, mode, limit, backend=backend)
