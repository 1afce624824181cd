"""Structured events: what a pool tells your logs, through structlog.

harnpool is silent until the application configures structlog: no event is even
built before ``structlog.configure`` (or ``structlog.testing.capture_logs``). Once
configured, the pool emits ``pool.opened`` (with recovery counts),
``task.submitted``, ``task.started``, ``task.completed``, ``task.retry_scheduled``,
``task.failed``, ``task.cancelled``, ``task.rejected``, ``journal.torn_tail``,
``journal.write_failed`` and ``pool.closed``, bound with the pool's path, the task
id and its key. Here they are rendered as ``key=value`` lines.

Run it with ``python examples/07_events.py [DIRECTORY]``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import MutableMapping
from typing import Any

import anyio
import structlog

import harnpool

SEEN: list[str] = []


def remember_and_shorten(_: Any, __: str, event: MutableMapping[str, Any]) -> Any:
    """A structlog processor: note the event's name, and shorten paths for printing."""
    SEEN.append(event["event"])
    for field in ("pool", "path"):
        if field in event:
            event[field] = os.path.basename(event[field])
    return event


async def greet(name: str) -> str:
    return f"hello {name}"


async def fail(reason: str) -> None:
    raise RuntimeError(reason)


async def hold(gate: anyio.Event) -> None:
    await gate.wait()


async def run_pool(path: str) -> None:
    """Complete, retry then fail, cancel and reject a task."""
    gate = anyio.Event()
    async with harnpool.open_pool(
        path, max_concurrent=1, max_queued=2, on_full="drop_newest", retry_backoff=0.01
    ) as pool:
        await pool.wait(await pool.submit(greet, "ada", key="greet-ada"))
        with contextlib.suppress(harnpool.TaskFailed):
            await pool.wait(await pool.submit(fail, "disk full", key="nightly", retries=1))
        await pool.submit(hold, gate)
        later = await pool.submit(greet, "bob", key="greet-bob")  # queued behind "hold"
        await pool.submit(greet, "cy", key="greet-cy")
        await pool.submit(greet, "di", key="greet-di")  # the queue is full: dropped
        await pool.cancel(later)
        gate.set()


async def main(directory: str) -> int:
    # 1. Not configured: the same run prints nothing at all.
    structlog.reset_defaults()
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(out):
        await run_pool(os.path.join(directory, "quiet.jsonl"))
    print(f"before structlog.configure: {len(out.getvalue())} characters of output")

    # 2. Configured: one key=value line per event.
    structlog.configure(
        processors=[
            remember_and_shorten,
            structlog.processors.add_log_level,
            structlog.processors.KeyValueRenderer(
                key_order=["level", "event", "task_id", "key"], drop_missing=True
            ),
        ]
    )
    print("after structlog.configure:")
    path = os.path.join(directory, "events.jsonl")
    await run_pool(path)
    async with await anyio.open_file(path, "ab") as journal:  # as a crash mid-write leaves it
        await journal.write(b'{"kind":"task","id":"t9","se')
    async with harnpool.open_pool(path):
        pass

    expected = {
        "pool.opened",
        "task.submitted",
        "task.started",
        "task.completed",
        "task.retry_scheduled",
        "task.failed",
        "task.cancelled",
        "task.rejected",
        "journal.torn_tail",
        "pool.closed",
    }
    if out.getvalue() or not expected <= set(SEEN):
        print(f"FAILED: silent={not out.getvalue()}, missing events: {expected - set(SEEN)}")
        return 1
    print(f"OK: silent until configured, then {len(SEEN)} events of {len(set(SEEN))} kinds")
    return 0


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="harnpool-events-")
    os.makedirs(directory, exist_ok=True)
    print(f"working in {directory}")
    sys.exit(anyio.run(main, directory))
