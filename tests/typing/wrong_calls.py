"""Calls mypy must refuse: tests/typing/test_wrong_calls.py checks each marked line.

Excluded from the project's own mypy run (pyproject.toml). A line ending in
``# error: code`` must be reported with that error code (more codes may be
listed, comma-separated); no other line may be reported.
"""

from __future__ import annotations

import functools

import harnpool


async def charge(amount: int) -> str:
    return f"charged {amount}"


def refund(amount: int, note: str = "") -> float:
    return -amount


async def wrong_submits(pool: harnpool.Pool) -> None:
    await pool.submit(charge, "not-an-int")  # error: arg-type
    await pool.submit(charge)  # error: call-arg
    await pool.submit(charge, 1, 2)  # error: call-arg
    await pool.submit(refund, "not-an-int")  # error: arg-type
    await pool.submit(refund, 1, 2)  # error: arg-type
    await pool.submit(charge(1))  # error: call-overload
    await pool.submit(functools.partial(refund, note=1), 1)  # error: arg-type
    harnpool.Job(charge, "not-an-int")  # error: arg-type
    harnpool.Job(refund)  # error: arg-type


async def wrong_results(pool: harnpool.Pool) -> None:
    charged = await pool.submit(charge, 1)
    refunded = await pool.submit(refund, 1)
    result = await pool.wait(refunded)
    result.upper()  # error: attr-defined
    text = await pool.wait(charged)
    text.is_integer()  # error: attr-defined
    ids: list[harnpool.TaskId[str]] = [refunded]  # error: list-item
    print(ids)


def wrong_blocking(pool: harnpool.BlockingPool) -> None:
    pool.submit(charge, "not-an-int")  # error: arg-type
    pool.submit(refund)  # error: call-arg
    number: int = pool.wait(pool.submit(charge, 1))  # error: assignment
    print(number)
