"""Context and results as they come: a request id that follows its tasks, and their answers.

Each task runs in a copy of its submitter's ``contextvars`` context, as
``asyncio.create_task`` would run it: a request id set by the code that submits
is seen by the task (async or plain), and what the task sets stays in the task.
Inside a task, ``harnpool.current_task()`` says which task and attempt it is,
and structlog's context variables carry ``task_id`` and ``key``, so the task's
own log lines line up with the pool's events. ``pool.as_completed(ids)`` yields
the ids as their tasks finish, and ``pool.results(ids)`` gives every result in
order.

Run it with ``python examples/12_context_and_results.py [DIRECTORY]``.
"""

from __future__ import annotations

import contextvars
import os
import sys
import tempfile
from collections.abc import MutableMapping
from typing import Any

import anyio
import structlog
import structlog.contextvars

import harnpool

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
LINES: list[str] = []


def keep(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    """A structlog renderer: keep the line; show only what this example looks at."""
    fields = ("event", "task_id", "key", "request")
    line = " ".join(f"{k}={event[k]}" for k in fields if k in event)
    LINES.append(line)
    return line


async def fetch(page: int, delay: float) -> str:
    """An async task: it logs, reads the request id, and sets a variable of its own."""
    me = harnpool.current_task()
    request = request_id.get()
    structlog.get_logger().info("app.fetching", request=request)
    await anyio.sleep(delay)
    request_id.set("changed inside the task")  # stays in this task's copy
    return f"{me.id} ({me.key}, attempt {me.attempt}) fetched page {page} for {request}"


def checksum(text: str) -> str:
    """A plain task, in a worker thread: the same context and current task."""
    return f"{harnpool.current_task().id} saw request {request_id.get()}: {len(text)}"


async def main(directory: str) -> int:
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, keep],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    path = os.path.join(directory, "pool.jsonl")
    async with harnpool.open_pool(path, max_concurrent=4) as pool:
        request_id.set("req-42")
        # Slowest first: they finish in the opposite order.
        jobs = [harnpool.Job(fetch, p, 0.3 - 0.1 * p, key=f"page-{p}") for p in range(3)]
        ids = await pool.submit_many([*jobs, harnpool.Job(checksum, "hello")])
        request_id.set("req-43")  # later changes do not reach tasks already submitted
        finished = [task_id async for task_id in pool.as_completed(ids, timeout=10)]
        fetches = [task_id for task_id in finished if task_id != ids[3]]
        print(f"as_completed: {finished}, the fetches {fetches}")
        results = await pool.results(ids)
        for result in results:
            print(f"  {result}")
        print(f"the submitter's request id is still {request_id.get()!r}")
        try:
            harnpool.current_task()
        except harnpool.NotInTaskError:
            print("current_task() outside a task raises NotInTaskError")

    inside = [line for line in LINES if line.startswith("event=app.fetching")]
    for line in inside:
        print(f"log: {line}")
    correlated = all(
        any(line.startswith("event=task.completed") and f"task_id={t}" in line for line in LINES)
        for t in ids[:3]
    )
    if not (
        fetches == ids[2::-1]
        and all("req-42" in line for line in inside)
        and len(inside) == 3
        and results[3].endswith("saw request req-42: 5")
        and request_id.get() == "req-43"
        and correlated
    ):
        print("FAILED: context or results were not as expected")
        return 1
    print("OK: tasks ran in their submitter's context, and results came as they finished")
    return 0


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="harnpool-context-")
    os.makedirs(directory, exist_ok=True)
    print(f"working in {directory}")
    sys.exit(anyio.run(main, directory))
