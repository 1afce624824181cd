"""The child process of the crash loop: run a pool on a plan, logging to a ledger.

Run as ``python _crash_child.py JOURNAL LEDGER PLAN EVENT_FD``. The plan (JSON) lists
the keys to submit, in order, and how to group them. The child opens the pool,
submits every key (a key the journal knows re-attaches its recovered task), waits
for each, and appends one line per event to the ledger, a file outside the
journal opened with ``O_APPEND`` and written with ``os.write``, so every line
written before a SIGKILL survives it:

    ready - <pid>            before the pool opens
    opened - <requeued>      the pool is open
    acked <key> "<id>"       submit returned the id
    start <key> <pid>        the task's function started
    end <key> -              the task's function returned or raised
    result <key> <json>      wait returned (type name and value)
    failed <key> <json>      wait raised TaskFailed (error type and message)
    closed - -               the pool's block ended

Each line is also written to ``EVENT_FD``, a pipe the parent reads to pick the
moment it kills the child. The task functions are defined here, so the parent
imports :func:`expected` to know what every key must end with.
"""

from __future__ import annotations

import os
import random
import sys
import time
from typing import Any

import anyio
import anyio.lowlevel
import msgspec

import harnpool

MAX_CONCURRENT = 3


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """What the struct-returning tasks return: typed, so wait() gives a Receipt back."""

    key: str
    total: int
    tags: list[str]


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What the parent asks one child to do."""

    round: int
    seed: int
    keys: list[str]
    #: The pool's ``start`` setting.
    start: str = "strict"


_ledger_fd = -1
_event_fd = -1


def note(event: str, key: str = "-", payload: str = "-") -> None:
    """Append one line to the ledger, then tell the parent about it."""
    line = f"{event} {key} {payload}\n".encode()
    os.write(_ledger_fd, line)
    os.write(_event_fd, line)


def index(key: str) -> int:
    return int(key.removeprefix("k"))


def kind(key: str) -> str:
    """What a key's task does; the mix is fixed by the key's number."""
    return (
        "async_struct",
        "async_struct",
        "sync_dict",
        "sync_dict",
        "async_fail",
        "sync_fail",
        "async_slow",
        "sync_slow",
        "async_list",
        "async_list",
    )[index(key) % 10]


def priority(key: str) -> int:
    return (index(key) * 7) % 5 - 2


def _duration(key: str) -> float:
    return 0.03 + (index(key) % 4) * 0.04


def _receipt(key: str) -> Receipt:
    n = index(key)
    return Receipt(key=key, total=n * n, tags=[f"t{n % 3}", kind(key)])


def _record(key: str) -> dict[str, Any]:
    n = index(key)
    return {"key": key, "n": n, "squares": [i * i for i in range(n % 5)], "ok": True}


async def async_struct(key: str) -> Receipt:
    note("start", key, str(os.getpid()))
    await anyio.lowlevel.checkpoint()
    note("end", key)
    return _receipt(key)


async def async_slow(key: str) -> Receipt:
    note("start", key, str(os.getpid()))
    await anyio.sleep(_duration(key))
    note("end", key)
    return _receipt(key)


async def async_list(key: str) -> list[int]:
    note("start", key, str(os.getpid()))
    note("end", key)
    return [index(key), -index(key)]


async def async_fail(key: str) -> int:
    note("start", key, str(os.getpid()))
    await anyio.lowlevel.checkpoint()
    note("end", key)
    raise ValueError(f"refused {key}")


def sync_dict(key: str) -> dict[str, Any]:
    note("start", key, str(os.getpid()))
    note("end", key)
    return _record(key)


def sync_slow(key: str) -> dict[str, Any]:
    note("start", key, str(os.getpid()))
    time.sleep(_duration(key))  # a blocking function: the pool runs it in a thread
    note("end", key)
    return _record(key)


def sync_fail(key: str) -> dict[str, Any]:
    note("start", key, str(os.getpid()))
    note("end", key)
    raise LookupError(f"no record for {key}")


FUNCTIONS: dict[str, Any] = {
    "async_struct": async_struct,
    "async_slow": async_slow,
    "async_list": async_list,
    "async_fail": async_fail,
    "sync_dict": sync_dict,
    "sync_slow": sync_slow,
    "sync_fail": sync_fail,
}


def expected(key: str) -> tuple[str, bytes]:
    """What a key's task must end as: ``("completed", result JSON)`` or ``("failed", ...)``.

    For a failure the bytes are the JSON of ``[error_type, error_message]``.
    """
    k = kind(key)
    if k == "async_fail":
        return "failed", msgspec.json.encode(["builtins.ValueError", f"refused {key}"])
    if k == "sync_fail":
        return "failed", msgspec.json.encode(["builtins.LookupError", f"no record for {key}"])
    if k in ("async_struct", "async_slow"):
        return "completed", msgspec.json.encode(_receipt(key))
    if k == "async_list":
        return "completed", msgspec.json.encode([index(key), -index(key)])
    return "completed", msgspec.json.encode(_record(key))


def expected_type(key: str) -> str:
    """The type name ``wait`` must return for a completed key."""
    return {"async_struct": "Receipt", "async_slow": "Receipt", "async_list": "list"}.get(
        kind(key), "dict"
    )


async def run(journal: str, plan: Plan) -> None:
    rng = random.Random(plan.seed)
    note("ready", payload=str(os.getpid()))
    # The parent kills on purpose, however often a task has been interrupted:
    # no task here crashes its process, so none must be given up as one that does.
    async with harnpool.open_pool(
        journal,
        max_concurrent=MAX_CONCURRENT,
        max_recoveries=None,
        start="eager" if plan.start == "eager" else "strict",
    ) as pool:
        note("opened", payload=str(len(pool.recovery.requeued)))

        async def wait_for(key: str, task_id: str) -> None:
            try:
                value = await pool.wait(task_id)
            except harnpool.TaskFailed as exc:
                note(
                    "failed", key, msgspec.json.encode([exc.error_type, exc.error_message]).decode()
                )
                return
            payload = {"type": type(value).__name__, "value": value}
            note("result", key, msgspec.json.encode(payload).decode())

        async def submit_one(key: str) -> None:
            task_id = await pool.submit(FUNCTIONS[kind(key)], key, key=key, priority=priority(key))
            note("acked", key, f'"{task_id}"')
            tg.start_soon(wait_for, key, task_id)

        async def submit_batch(keys: list[str]) -> None:
            jobs = [harnpool.Job(FUNCTIONS[kind(k)], k, key=k, priority=priority(k)) for k in keys]
            ids = await pool.submit_many(jobs)
            for key, task_id in zip(keys, ids, strict=True):
                note("acked", key, f'"{task_id}"')
                tg.start_soon(wait_for, key, task_id)

        # Sequential submits, concurrent ones (which share fsyncs) and batches, mixed.
        async with anyio.create_task_group() as tg:
            keys = list(plan.keys)
            while keys:
                size = rng.randint(1, 4)
                chunk, keys = keys[:size], keys[size:]
                style = rng.random()
                if style < 0.3:
                    await submit_batch(chunk)
                elif style < 0.6:
                    for key in chunk:
                        tg.start_soon(submit_one, key)
                else:
                    for key in chunk:
                        await submit_one(key)
    note("closed")


def main(argv: list[str]) -> None:
    global _ledger_fd, _event_fd
    journal, ledger, plan_path, event_fd = argv
    _ledger_fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _event_fd = int(event_fd)
    with open(plan_path, "rb") as f:
        plan = msgspec.json.decode(f.read(), type=Plan)
    anyio.run(run, journal, plan)


if __name__ == "__main__":
    main(sys.argv[1:])
