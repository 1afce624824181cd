"""Write the golden journals in this directory with the installed harnpool.

Run ``python tests/reliability/golden/make_golden.py`` only when a new format
version adds a golden set: existing files are kept as they are, so later
versions keep proving they read what this one wrote. The clock and the pool id
are fixed, and tasks run one at a time, so a run writes the same bytes each time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import itertools
import sys
import tempfile
import uuid
from pathlib import Path
from unittest import mock

import anyio
import msgspec

import harnpool

HERE = Path(__file__).parent


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


async def value(v: object) -> object:
    return v


async def invoice(n: int) -> Invoice:
    return Invoice(number=n, total=n * 10.5, lines=[f"item {n}", "shipping"])


async def point() -> Point:
    return Point(3, -4)


async def when() -> datetime.datetime:
    return datetime.datetime(2024, 6, 11, 12, 30, tzinfo=datetime.UTC)


async def ident() -> uuid.UUID:
    return uuid.UUID("12345678-1234-5678-1234-567812345678")


async def colour() -> Colour:
    return Colour.GREEN


async def boom(message: str) -> None:
    raise ValueError(message)


class _Leave(Exception):
    pass


async def mixed(path: Path) -> None:
    blocker = anyio.Event()
    started = anyio.Event()

    async def stuck() -> None:
        started.set()
        await blocker.wait()

    async with harnpool.open_pool(path) as pool:
        for n in range(3):
            await pool.wait(await pool.submit(value, n * n, key=f"square-{n}", priority=n))
        failed = await pool.submit(boom, "no stock", key="order-7")
        with contextlib.suppress(harnpool.TaskFailed):
            await pool.wait(failed)
    try:
        async with harnpool.open_pool(path) as pool:
            running = await pool.submit(stuck, key="stuck", priority=5)
            await started.wait()
            assert pool.info(running).status is harnpool.Status.RUNNING
            # Queued behind the stuck task, never started: max_concurrent is 1.
            await pool.submit(value, "later", key="queued-1", priority=1)
            await pool.submit(value, "later", priority=-1)
            raise _Leave
    except _Leave:
        pass


async def results(path: Path) -> None:
    async with harnpool.open_pool(path) as pool:
        ids = [
            await pool.submit(value, 42, key="int"),
            await pool.submit(value, 2**70, key="big int"),
            await pool.submit(value, -0.5, key="float"),
            await pool.submit(value, "caf\u00e9 \u2603 \U0001f600", key="str"),
            await pool.submit(value, None, key="none"),
            await pool.submit(value, True, key="bool"),
            await pool.submit(value, [1, [2, [3]], {"a": None}], key="nested"),
            await pool.submit(value, {"k": "v", "n": 1}, key="dict"),
            await pool.submit(invoice, 7, key="struct"),
            await pool.submit(point, key="dataclass"),
            await pool.submit(when, key="datetime"),
            await pool.submit(ident, key="uuid"),
            await pool.submit(colour, key="enum"),
            await pool.submit(value, b"\x00\xffbytes", key="bytes"),
        ]
        for task_id in ids:
            await pool.wait(task_id)


def main() -> None:
    clock = itertools.count()
    fixed_time = mock.patch("time.time", side_effect=lambda: 1_718_000_000.0 + next(clock) * 0.25)
    fixed_id = mock.patch("uuid.uuid4", return_value=uuid.UUID(int=0x600DF11E))
    with fixed_time, fixed_id, tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        anyio.run(mixed, work / "mixed.jsonl")
        anyio.run(results, work / "results.jsonl")
        for name in ("mixed.jsonl", "results.jsonl"):
            (HERE / name).write_bytes((work / name).read_bytes())
        # A torn tail: the mixed journal plus the first 37 bytes of one more record.
        data = (work / "mixed.jsonl").read_bytes()
        last = data[data.rindex(b"\n", 0, len(data) - 1) + 1 :]
        (HERE / "torn_tail.jsonl").write_bytes(data + last[:37])
    print(f"wrote golden journals with harnpool {harnpool.__version__} to {HERE}", file=sys.stderr)


if __name__ == "__main__":
    main()
