"""The typed API: mypy checks the ``assert_type`` lines of this module (``make typecheck``),
and pytest runs it, so every typed call is a real one too.

``submit`` returns a ``TaskId[R]`` for a function returning (or awaiting to) an
``R``; ``wait`` gives an ``R`` for it, ``Any`` for a plain str. At runtime an id
is a plain ``str``. (This directory has no ``__init__.py``: a package named
``typing`` would shadow the standard library's for the scripts run from tests/.)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, assert_type

import msgspec

import harnpool
from harnpool import TaskId


async def charge(amount: int) -> str:
    return f"charged {amount}"


def refund(amount: int, note: str = "") -> float:
    return -amount - len(note)


async def notify(user: str, *, channel: str) -> None:
    assert channel


@harnpool.task(name="tests.typing.label")
def label(parcel: int, *, size: str = "small") -> dict[str, str]:
    return {"parcel": str(parcel), "size": size}


async def test_submit_and_wait_are_typed_by_the_functions_result(journal_path: Path) -> None:
    async with harnpool.open_pool(journal_path) as pool:
        charged = await pool.submit(charge, 5)
        assert_type(charged, TaskId[str])
        refunded = await pool.submit(refund, 2, "ab")
        assert_type(refunded, TaskId[float])
        notified = await pool.submit(functools.partial(notify, channel="mail"), "ann")
        assert_type(notified, TaskId[None])
        labelled = await pool.submit(functools.partial(label, size="large"), 7)
        assert_type(labelled, TaskId[dict[str, str]])
        assert_type(await pool.wait(charged), str)
        assert_type(await pool.wait(refunded, timeout=10), float)
        assert_type(await pool.wait(notified), None)
        assert_type(await pool.wait(labelled), dict[str, str])
        plain: str = charged
        assert_type(await pool.wait(plain), Any)
        assert await pool.wait(charged) == "charged 5"
        assert await pool.wait(refunded) == -4.0
        assert await pool.wait(labelled) == {"parcel": "7", "size": "large"}
        ids = await pool.submit_many([harnpool.Job(charge, 1), harnpool.Job(refund, 1)])
        assert_type(ids, list[str])


async def test_an_id_is_a_plain_str_at_runtime(journal_path: Path) -> None:
    async with harnpool.open_pool(journal_path) as pool:
        task_id = await pool.submit(charge, 1)
        assert type(task_id) is str
        assert isinstance(task_id, TaskId)
        assert task_id in {pool.tasks()[0].id}
        assert json.loads(json.dumps([task_id])) == [task_id]
        assert msgspec.json.decode(msgspec.json.encode(task_id)) == task_id
        again = TaskId[str](str(task_id))  # an id read back from elsewhere, typed again
        assert_type(again, TaskId[str])
        assert type(again) is str
        assert await pool.wait(again) == "charged 1"


def test_the_blocking_pool_is_typed_alike(journal_path: Path) -> None:
    with harnpool.open_blocking_pool(journal_path) as pool:
        charged = pool.submit(charge, 3)
        assert_type(charged, TaskId[str])
        refunded = pool.submit(refund, 3)
        assert_type(refunded, TaskId[float])
        assert_type(pool.wait(charged), str)
        assert_type(pool.wait(str(refunded)), Any)
        assert pool.wait(refunded) == -3.0
