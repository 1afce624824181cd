"""When ``wait`` returns a typed result after a restart, as the README says it does."""

from __future__ import annotations

from pathlib import Path

import msgspec

import harnpool


class Invoice(msgspec.Struct, frozen=True):
    number: int
    total: float


async def make_invoice(number: int) -> Invoice:
    return Invoice(number, number * 1.5)


@harnpool.task(name="tests.test_typed_results.make_registered_invoice")
async def make_registered_invoice(number: int) -> Invoice:
    return Invoice(number, number * 1.5)


async def test_unregistered_result_is_plain_json_until_re_attached(journal_path: Path) -> None:
    async with harnpool.open_pool(journal_path) as pool:
        # A plain str: reopened without the function, the result is not an Invoice.
        task_id: str = await pool.submit(make_invoice, 2, key="invoice-2")
        assert await pool.wait(task_id) == Invoice(2, 3.0)
    async with harnpool.open_pool(journal_path) as pool:
        # The function cannot be found from the journal: plain JSON comes back.
        assert await pool.wait(task_id) == {"number": 2, "total": 3.0}
        # Re-attached by its key (the task does not run again): now typed by the annotation.
        assert await pool.submit(make_invoice, 2, key="invoice-2") == task_id
        typed = await pool.wait(task_id)
        assert type(typed) is Invoice
        assert typed == Invoice(2, 3.0)
        assert pool.info(task_id).attempts == 1


async def test_registered_result_is_typed_at_once_after_reopen(journal_path: Path) -> None:
    async with harnpool.open_pool(journal_path) as pool:
        task_id = await pool.submit(make_registered_invoice, 4, key="invoice-4")
        await pool.wait(task_id)
    async with harnpool.open_pool(journal_path) as pool:
        result = await pool.wait(task_id)  # nothing submitted or re-attached
        assert type(result) is Invoice
        assert result == Invoice(4, 6.0)
