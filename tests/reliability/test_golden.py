"""Golden journals: files written by harnpool 0.1.0 (format 1) must load in every later version.

The files in ``golden/`` were written by ``golden/make_golden.py`` and are never
regenerated over: what they must load to is written out here, by hand, not read
back from a run. A test that fails here means a change broke old journals.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import shutil
import uuid
from pathlib import Path

import anyio
import msgspec
import pytest

import harnpool
from harnpool._journal import load

GOLDEN = Path(__file__).parent / "golden"
POOL_ID = "000000000000000000000000600df11e"

# id -> (status after load, key, priority, seq, attempts)
MIXED = {
    "t1": ("completed", "square-0", 0, 1, 1),
    "t2": ("completed", "square-1", 1, 2, 1),
    "t3": ("completed", "square-2", 2, 3, 1),
    "t4": ("failed", "order-7", 0, 4, 1),
    "t5": ("running", "stuck", 5, 5, 1),
    "t6": ("queued", "queued-1", 1, 6, 0),
    "t7": ("queued", None, -1, 7, 0),
}


def _copy(name: str, tmp_path: Path) -> Path:
    # Opening compacts: work on a copy, and check the original is never changed.
    target = tmp_path / name
    shutil.copyfile(GOLDEN / name, target)
    return target


@pytest.mark.parametrize("name", ["mixed.jsonl", "torn_tail.jsonl"])
def test_a_mixed_journal_loads(name: str) -> None:
    loaded = load(GOLDEN / name)
    assert loaded is not None
    assert loaded.header.format == 1
    assert loaded.header.pool_id == POOL_ID
    assert loaded.header.created_at == 1_718_000_000.0
    got = {
        i: (r.status.value, r.key, r.priority, r.seq, r.attempts) for i, r in loaded.tasks.items()
    }
    assert got == MIXED
    assert list(loaded.tasks) == sorted(MIXED, key=lambda i: MIXED[i][3])
    t1 = loaded.tasks["t1"]
    assert (t1.submitted_at, t1.started_at, t1.finished_at) == (
        1_718_000_000.25,
        1_718_000_000.5,
        1_718_000_000.75,
    )
    assert t1.function == "__main__.value"
    assert not isinstance(t1.result, msgspec.UnsetType)
    assert bytes(t1.result) == b"0"
    t4 = loaded.tasks["t4"]
    assert (t4.error_type, t4.error_message) == ("builtins.ValueError", "no stock")
    if name == "torn_tail.jsonl":
        assert loaded.torn is not None
        assert (loaded.torn.line, loaded.torn.offset, loaded.torn.length) == (10, 1661, 37)
    else:
        assert loaded.torn is None


@pytest.mark.parametrize("name", ["mixed.jsonl", "torn_tail.jsonl"])
async def test_a_mixed_journal_reopens_and_resumes(name: str, tmp_path: Path) -> None:
    original = (GOLDEN / name).read_bytes()
    path = _copy(name, tmp_path)
    ran: list[str] = []

    async def again(label: str) -> str:
        ran.append(label)
        return label

    async with harnpool.open_pool(path) as pool:
        report = pool.recovery
        assert (report.tasks, report.requeued, report.queued, report.finished) == (
            7,
            ("t5",),
            3,
            4,
        )
        assert (report.torn_tail is not None) == (name == "torn_tail.jsonl")
        assert [await pool.wait(f"t{n}") for n in (1, 2, 3)] == [0, 1, 4]
        with pytest.raises(harnpool.TaskFailed) as info:
            await pool.wait("t4")
        assert (info.value.error_type, info.value.error_message) == (
            "builtins.ValueError",
            "no stock",
        )
        assert pool.info("t5").status is harnpool.Status.QUEUED
        # Finished keys return their ids and run nothing; unfinished ones resume.
        assert await pool.submit(again, "square", key="square-2") == "t3"
        assert await pool.submit(again, "stuck", key="stuck") == "t5"
        assert await pool.submit(again, "queued", key="queued-1") == "t6"
        with anyio.fail_after(10):
            assert await pool.wait("t5") == "stuck"
            assert await pool.wait("t6") == "queued"
        assert pool.info("t5").attempts == 2
        new = await pool.submit(again, "new")
        assert new == "t8", "the submit counter went backwards"
    assert sorted(ran) == ["new", "queued", "stuck"]
    assert (GOLDEN / name).read_bytes() == original


class Invoice(msgspec.Struct, frozen=True):
    number: int
    total: float
    lines: list[str]


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


async def as_invoice() -> Invoice:
    raise AssertionError("a finished task ran again")


async def as_point() -> Point:
    raise AssertionError("a finished task ran again")


async def as_datetime() -> datetime.datetime:
    raise AssertionError("a finished task ran again")


async def as_uuid() -> uuid.UUID:
    raise AssertionError("a finished task ran again")


async def as_colour() -> Colour:
    raise AssertionError("a finished task ran again")


async def as_bytes() -> bytes:
    raise AssertionError("a finished task ran again")


async def untyped() -> object:
    raise AssertionError("a finished task ran again")


# key -> (the function re-attached for its return annotation, the value wait() must give)
RESULTS: dict[str, tuple[object, object]] = {
    "int": (untyped, 42),
    "big int": (untyped, 2**70),
    "float": (untyped, -0.5),
    "str": (untyped, "caf\u00e9 \u2603 \U0001f600"),
    "none": (untyped, None),
    "bool": (untyped, True),
    "nested": (untyped, [1, [2, [3]], {"a": None}]),
    "dict": (untyped, {"k": "v", "n": 1}),
    "struct": (as_invoice, Invoice(number=7, total=73.5, lines=["item 7", "shipping"])),
    "dataclass": (as_point, Point(3, -4)),
    "datetime": (as_datetime, datetime.datetime(2024, 6, 11, 12, 30, tzinfo=datetime.UTC)),
    "uuid": (as_uuid, uuid.UUID("12345678-1234-5678-1234-567812345678")),
    "enum": (as_colour, Colour.GREEN),
    "bytes": (as_bytes, b"\x00\xffbytes"),
}

# Without the function, a result is plain JSON.
PLAIN = {
    "struct": {"number": 7, "total": 73.5, "lines": ["item 7", "shipping"]},
    "dataclass": {"x": 3, "y": -4},
    "datetime": "2024-06-11T12:30:00Z",
    "uuid": "12345678-1234-5678-1234-567812345678",
    "enum": "green",
    "bytes": "AP9ieXRlcw==",
}


async def test_results_of_several_types_reload(tmp_path: Path) -> None:
    path = _copy("results.jsonl", tmp_path)
    loaded = load(path)
    assert loaded is not None
    assert loaded.torn is None
    assert len(loaded.tasks) == len(RESULTS)
    assert all(r.status is harnpool.Status.COMPLETED for r in loaded.tasks.values())
    async with harnpool.open_pool(path) as pool:
        by_key = {info.key: info.id for info in pool.tasks()}
        assert set(by_key) == set(RESULTS)
        for key, plain in PLAIN.items():
            assert await pool.wait(by_key[key]) == plain, key
        for key, (fn, expected) in RESULTS.items():
            assert await pool.submit(fn, key=key) == by_key[key]  # type: ignore[call-overload]
            got = await pool.wait(by_key[key])
            assert got == expected, key
            assert type(got) is type(expected), key
