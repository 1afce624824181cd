"""A functools.partial of a registered task stays registered: its keywords are journaled with
its arguments, and a reopened pool runs it with them, after a SIGKILL too."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import harnpool
from harnpool import Status
from harnpool._journal import load
from tests.test_kill_points import Ledger, kill_when

CHILD = Path(__file__).with_name("_partial_child.py")
DEADLINE = 10

#: Every run of :func:`pack` in this process: (parcel, size, dims).
RUNS: list[tuple[int, str, tuple[int, int]]] = []


@harnpool.task(name="tests.partials.pack")
async def pack(parcel: int, *, size: str, dims: tuple[int, int] = (1, 1)) -> str:
    RUNS.append((parcel, size, dims))
    return f"{parcel} {size} {dims!r}"


@harnpool.task(name="tests.partials.weigh")
def weigh(parcel: int, grams: int = 0) -> int:
    return parcel + grams


#: Set by :func:`held` when it starts; while it is set, ``held`` hangs.
STARTED: list[anyio.Event] = []


@harnpool.task(name="tests.partials.held")
async def held(parcel: int, *, size: str) -> str:
    if STARTED:
        STARTED[0].set()
        await anyio.sleep_forever()
    return f"{parcel} {size}"


@pytest.fixture(autouse=True)
def _fresh_state() -> None:
    RUNS.clear()
    STARTED.clear()


def stored_args(journal: Path, task_id: str) -> Any:
    """The arguments the task was journaled with (a completed record no longer holds them)."""
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    submitted = next(line for line in lines if line.get("id") == task_id)
    assert submitted["name"].startswith("tests.partials.")
    return submitted["args"]


async def test_a_partial_survives_a_sigkill_and_runs_with_its_keywords(tmp_path: Path) -> None:
    journal = tmp_path / "pool.jsonl"
    ledger = Ledger(tmp_path / "ledger")
    kill_when(lambda led: {"p1", "p2"} <= set(led.starts()), ledger, CHILD, journal, ledger.path)
    acked = ledger.acked()
    assert stored_args(journal, acked["p1"]) == {
        "args": [1],
        "kwargs": {"size": "large", "dims": [2, 3]},
    }
    with anyio.fail_after(DEADLINE):
        async with harnpool.open_pool(journal) as pool:
            # Nothing submitted: the registration found both, keywords and all.
            assert sorted(pool.recovery.resumed) == sorted(acked.values())
            assert await pool.wait(acked["p1"]) == "1 large (2, 3)"
            assert await pool.wait(acked["p2"]) == "2 small (1, 1)"
    # Decoded by the annotations: the keyword's tuple is a tuple again.
    assert sorted(RUNS) == [(1, "large", (2, 3)), (2, "small", (1, 1))]


async def test_a_partial_left_running_resumes_on_reopen(journal_path: Path) -> None:
    STARTED.append(anyio.Event())
    with anyio.fail_after(DEADLINE):
        with pytest.raises(KeyError):  # leaving by an exception keeps the task running
            async with harnpool.open_pool(journal_path) as pool:
                task_id = await pool.submit(functools.partial(held, size="large"), 4)
                assert pool.info(task_id).name == "tests.partials.held"
                await STARTED[0].wait()
                raise KeyError("leave")
        loaded = load(str(journal_path))
        assert loaded is not None
        assert loaded.tasks[task_id].status is Status.RUNNING
        STARTED.clear()  # it returns from now on
        async with harnpool.open_pool(journal_path) as pool:
            assert pool.recovery.resumed == (task_id,)
            assert await pool.wait(task_id) == "4 large"


async def test_nested_partials_merge_as_calling_them_would(journal_path: Path) -> None:
    inner = functools.partial(pack, 3, size="small", dims=(5, 5))
    outer = functools.partial(inner, size="large")
    async with harnpool.open_pool(journal_path) as pool:
        task_id = await pool.submit(outer)
        assert await pool.wait(task_id) == "3 large (5, 5)"
    assert stored_args(journal_path, task_id) == {
        "args": [3],
        "kwargs": {"size": "large", "dims": [5, 5]},
    }


async def test_a_partial_without_keywords_is_stored_as_plain_arguments(
    journal_path: Path,
) -> None:
    async with harnpool.open_pool(journal_path) as pool:
        task_id = await pool.submit(functools.partial(weigh, 6), 250)
        assert await pool.wait(task_id) == 256
    # The form every version reads.
    assert stored_args(journal_path, task_id) == [6, 250]


async def test_keywords_that_cannot_be_stored_are_refused_before_writing(
    journal_path: Path,
) -> None:
    unstorable: Any = object()
    async with harnpool.open_pool(journal_path) as pool:
        size = journal_path.stat().st_size
        with pytest.raises(harnpool.ArgumentsNotEncodableError, match=r"tests\.partials\.pack"):
            await pool.submit(functools.partial(pack, size=unstorable), 1)
        assert journal_path.stat().st_size == size
        assert pool.tasks() == []


async def test_a_line_of_the_older_format_still_resumes(journal_path: Path) -> None:
    header = {
        "kind": "header",
        "format": 1,
        "pool_id": "0" * 32,
        "created_at": 1.0,
        "max_concurrent": 1,
        "submit_counter": 1,
    }
    task = {
        "kind": "task",
        "id": "t1",
        "seq": 1,
        "status": "queued",
        "submitted_at": 1.0,
        "name": "tests.partials.pack",
        "args": [8],
    }
    journal_path.write_text("".join(json.dumps(line) + "\n" for line in (header, task)))
    async with harnpool.open_pool(journal_path) as pool:
        assert pool.recovery.resumed == ("t1",)
        with pytest.raises(harnpool.TaskFailed, match="size"):  # positional arguments only
            await pool.wait("t1")
    assert RUNS == []


def test_an_older_reader_refuses_stored_keywords_rather_than_drop_them() -> None:
    """What an older harnpool decodes arguments as: a list. The keyword form is not one."""
    stored = harnpool._registry.encode_args(pack, (1,), kwargs={"size": "large"})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(stored, type=list[msgspec.Raw])
