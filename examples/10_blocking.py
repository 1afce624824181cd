"""The pool from sync code: plain threads submit and wait, as a Django or Flask app would.

``with harnpool.open_blocking_pool(path, ...) as pool:`` runs the pool on an
event loop in a thread of its own; ``pool.submit``, ``pool.wait`` and the rest
are plain methods that block the calling thread, and any number of threads may
call them at once. Async task functions run on the pool's loop, plain ones in
its worker threads; errors arrive with their own types. This runs a burst of
"requests" from a thread pool, a failing task, a wait timeout, then leaves the
block by an exception with a registered task queued, and reopens the journal
(under trio this time) to see it resume.

Run it with ``python examples/10_blocking.py [DIRECTORY]``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import anyio

import harnpool


def thumbnail(image: str) -> str:
    """A plain function: runs in one of the pool's worker threads."""
    return f"{image}: thumbnail {hashlib.sha256(image.encode()).hexdigest()[:8]}"


async def notify(user: str) -> str:
    """An async function: runs on the pool's event loop."""
    await anyio.sleep(0.01)
    return f"{user} notified"


def charge(amount: int) -> str:
    if amount < 0:
        raise ValueError(f"cannot charge {amount}")
    return f"charged {amount}"


def slow(gate: threading.Event) -> str:
    gate.wait()
    return "slow done"


@harnpool.task(name="examples.blocking.invoice")
def invoice(month: str) -> str:
    return f"invoice for {month} sent"


class Shutdown(Exception):
    """Leaves the block the way a crash leaves the journal: tasks not finished."""


def handle_request(pool: harnpool.BlockingPool, n: int) -> tuple[str, str]:
    """What a request handler does: submit its work, then wait for it, from its own thread."""
    image = pool.submit(thumbnail, f"photo{n}.jpg", key=f"thumb-{n}")
    note = pool.submit(notify, f"user{n}")
    return pool.wait(image), pool.wait(note)


def main(directory: str) -> int:
    path = os.path.join(directory, "blocking.jsonl")
    with harnpool.open_blocking_pool(path, max_concurrent=4) as pool:
        print(f"opened {pool!r}")
        with ThreadPoolExecutor(8) as handlers:
            answers = list(handlers.map(lambda n: handle_request(pool, n), range(8)))
        for image, note in answers[:3]:
            print(f"  {image}; {note}")
        print(f"8 threads, 16 tasks: {pool.statistics().completed} completed")
        first = next(info.id for info in pool.tasks() if info.key == "thumb-0")
        again = pool.submit(thumbnail, "photo0.jpg", key="thumb-0")
        print(f"resubmitting key 'thumb-0' -> {again}, the same task as {first}, not run again")

        try:
            pool.wait(pool.submit(charge, -5))
        except harnpool.TaskFailed as exc:
            print(f"TaskFailed in the calling thread: {exc} (cause: {exc.__cause__!r})")
        gate = threading.Event()
        waiting = pool.submit(slow, gate)
        try:
            pool.wait(waiting, timeout=0.05)
        except harnpool.WaitTimeout as exc:
            print(f"WaitTimeout: {exc}")
        gate.set()
        print(f"then wait -> {pool.wait(waiting)!r}")

    blocker = threading.Event()
    try:
        with harnpool.open_blocking_pool(path) as pool:
            pool.submit(blocker.wait)  # occupies the only worker
            pool.submit(invoice, "2026-04", key="invoice-2026-04")
            raise Shutdown
    except Shutdown:
        print("left the block by an exception with a registered task queued")
    finally:
        blocker.set()
    with harnpool.open_blocking_pool(path, backend="trio") as pool:
        resumed = pool.recovery.resumed
        print(f"reopened on trio: resumed {resumed}")
        results = [pool.wait(task_id) for task_id in resumed]
        print(f"  {results}")

    if not (len(answers) == 8 and again == first and results == ["invoice for 2026-04 sent"]):
        print("FAILED: the blocking pool did not behave as the async one")
        return 1
    print("OK: plain threads used the pool, and its journal resumed after the exception")
    return 0


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="harnpool-blocking-")
    os.makedirs(directory, exist_ok=True)
    print(f"working in {directory}")
    sys.exit(main(directory))
