"""Cancelling tasks, and a bounded queue with each ``on_full`` policy.

- ``await pool.cancel(task_id)``: a queued task is cancelled at once, a running
  one through anyio cancellation, a finished one is left alone (it returns
  False). ``wait`` on a cancelled task raises ``harnpool.TaskCancelled``.
- ``max_queued=N`` with ``on_full=``: ``"block"`` makes submit wait for room,
  ``"reject"`` raises ``harnpool.QueueFull`` and writes nothing,
  ``"drop_oldest"``/``"drop_newest"`` journal the dropped task ``rejected``, and
  its ``wait`` raises ``harnpool.TaskRejected`` with the reason.

Run it with ``python examples/05_cancel_and_backpressure.py [DIRECTORY]``.
"""

from __future__ import annotations

import os
import sys
import tempfile

import anyio

import harnpool


async def step(name: str, started: anyio.Event, gate: anyio.Event) -> str:
    started.set()
    await gate.wait()
    return name


async def cancelling(directory: str) -> bool:
    gate, started = anyio.Event(), anyio.Event()
    async with harnpool.open_pool(
        os.path.join(directory, "cancel.jsonl"), max_concurrent=1
    ) as pool:
        open_gate = anyio.Event()
        open_gate.set()
        done = await pool.submit(step, "done", anyio.Event(), open_gate)
        await pool.wait(done)
        running = await pool.submit(step, "running", started, gate)
        queued = await pool.submit(step, "queued", anyio.Event(), gate)
        await started.wait()  # max_concurrent=1: "running" runs, "queued" waits
        answers = {}
        for name, task_id in [("finished", done), ("queued", queued), ("running", running)]:
            answers[name] = await pool.cancel(task_id)
            print(f"cancel({name} task) -> {answers[name]}; now {pool.info(task_id).status.value}")
        cancelled = 0
        for task_id in (queued, running):
            try:
                await pool.wait(task_id)
            except harnpool.TaskCancelled as exc:
                print(f"  wait: {exc}")
                cancelled += 1
    return answers == {"finished": False, "queued": True, "running": True} and cancelled == 2


async def full_queue(directory: str, on_full: harnpool.OnFull) -> str:
    """Run one task, queue two (max_queued=2), then submit a fourth; say what happened."""
    gate, started = anyio.Event(), anyio.Event()
    journal = os.path.join(directory, f"queue-{on_full}.jsonl")
    async with harnpool.open_pool(journal, max_concurrent=1, max_queued=2, on_full=on_full) as pool:
        await pool.submit(step, "a", started, gate)
        await started.wait()
        b = await pool.submit(step, "b", anyio.Event(), gate)
        await pool.submit(step, "c", anyio.Event(), gate)
        print(f"\non_full={on_full!r}: queued={pool.statistics().queued}, submitting d")
        outcome = ""
        if on_full == "block":
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.submit, step, "d", anyio.Event(), gate)
                await anyio.sleep(0.05)
                outcome = f"submit waits ({len(pool.tasks())} tasks written)"
                gate.set()  # "a" finishes, "b" starts: room for "d", the submit returns
            outcome += f", then returns once there is room ({len(pool.tasks())} tasks)"
        elif on_full == "reject":
            try:
                await pool.submit(step, "d", anyio.Event(), gate)
            except harnpool.QueueFull as exc:
                outcome = f"QueueFull ({len(pool.tasks())} tasks written): {exc}"
        else:
            d = await pool.submit(step, "d", anyio.Event(), gate)
            try:
                await pool.wait(b if on_full == "drop_oldest" else d)
            except harnpool.TaskRejected as exc:
                outcome = f"TaskRejected: {exc.reason} ({exc})"
        gate.set()
        print(f"  {outcome}")
        return outcome


async def main(directory: str) -> int:
    if not await cancelling(directory):
        print("FAILED: cancel did not behave as documented")
        return 1
    expected: dict[harnpool.OnFull, str] = {
        "block": "submit waits (3 tasks written), then returns once there is room (4 tasks)",
        "reject": "QueueFull (3 tasks written): ",
        "drop_oldest": "TaskRejected: drop_oldest_queue_full (task t2 ",
        "drop_newest": "TaskRejected: drop_newest_queue_full (task t4 ",
    }
    for on_full, start in expected.items():
        outcome = await full_queue(directory, on_full)
        if not outcome.startswith(start):
            print(f"FAILED: on_full={on_full!r} gave {outcome!r}")
            return 1
    print("\nOK: cancel and every on_full policy behaved as documented")
    return 0


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="harnpool-cancel-")
    os.makedirs(directory, exist_ok=True)
    print(f"working in {directory}")
    sys.exit(anyio.run(main, directory))
