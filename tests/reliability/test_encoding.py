"""A result that cannot be stored fails its task alone, and the journal stays valid.

Arguments are kept in memory only (the journal stores the function's name, not
its arguments), so an argument msgspec cannot encode is not a journal concern
yet; when arguments are stored, add them here: such a submit must fail before
anything is written, naming the type.
"""

from __future__ import annotations

import datetime
import functools
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import msgspec
import pytest

import harnpool
from harnpool._journal import load

from ._loader_helpers import all_lines_decode


class _Opaque:
    pass


class _BrokenZone(datetime.tzinfo):
    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        raise RuntimeError("this zone has no offset")

    def dst(self, dt: datetime.datetime | None) -> datetime.timedelta:
        raise RuntimeError("this zone has no offset")

    def tzname(self, dt: datetime.datetime | None) -> str:
        return "broken"


def _cycle() -> object:
    items: list[object] = []
    items.append(items)
    return items


UNENCODABLE: dict[str, tuple[Callable[[], object], str]] = {
    "object": (_Opaque, "_Opaque"),
    "complex": (lambda: 1j, "builtins.complex"),
    "tuple keys": (lambda: {(1, 2): "pair"}, "builtins.dict"),
    "nested": (lambda: {"ok": [1, 2, {"deep": _Opaque()}]}, "builtins.dict"),
    "cyclic list": (_cycle, "builtins.list"),
    "datetime whose zone raises": (
        lambda: datetime.datetime(2024, 1, 1, tzinfo=_BrokenZone()),
        "datetime.datetime",
    ),
}


async def good(n: int) -> dict[str, int]:
    await anyio.lowlevel.checkpoint()
    return {"n": n}


def _guarded(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``scenario`` on an event loop of its own, failing (not hanging) if it never ends.

    A pool whose worker dies can leave a shielded flush waiting forever; the
    thread is then abandoned and the test fails.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            anyio.run(scenario)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the pool hung after an unencodable result"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("name", sorted(UNENCODABLE))
def test_an_unencodable_result_fails_only_its_task(name: str, journal_path: Path) -> None:
    _guarded(functools.partial(_unencodable_result, name, journal_path))


async def _unencodable_result(name: str, journal_path: Path) -> None:
    make, type_name = UNENCODABLE[name]

    async def bad() -> object:
        return make()

    async with harnpool.open_pool(journal_path, max_concurrent=3) as pool:
        # One batch: nothing is left to submit once the bad task runs, so a pool
        # that breaks makes this test fail rather than hang in a submit.
        jobs = [harnpool.Job(good, n) for n in range(3)]
        jobs.append(harnpool.Job(bad, key="bad"))
        jobs += [harnpool.Job(good, n) for n in range(3, 6)]
        ids = await pool.submit_many(jobs)
        before, bad_id, after = ids[:3], ids[3], ids[4:]
        with anyio.fail_after(10):
            with pytest.raises(harnpool.TaskFailed) as info:
                await pool.wait(bad_id)
            results = [await pool.wait(task_id) for task_id in before + after]
    assert results == [{"n": n} for n in range(6)]

    failure = info.value
    assert (failure.task_id, failure.key) == (bad_id, "bad")
    assert failure.error_type == "harnpool.ResultNotEncodableError"
    assert type_name in failure.error_message
    assert isinstance(failure.__cause__, harnpool.ResultNotEncodableError)
    assert isinstance(failure.__cause__, TypeError)
    assert type_name in str(failure.__cause__)

    data = journal_path.read_bytes()
    assert all_lines_decode(data)
    loaded = load(journal_path)
    assert loaded is not None
    assert loaded.torn is None
    record = loaded.tasks[bad_id]
    assert record.status is harnpool.Status.FAILED
    assert isinstance(record.result, msgspec.UnsetType), "a partial result was stored"

    async with harnpool.open_pool(journal_path) as pool:
        assert pool.recovery.tasks == 7
        assert pool.info(bad_id).status is harnpool.Status.FAILED
        with pytest.raises(harnpool.TaskFailed) as again:
            await pool.wait(bad_id)
        assert (again.value.error_type, again.value.error_message) == (
            failure.error_type,
            failure.error_message,
        )
        assert [await pool.wait(t) for t in before + after] == results


def test_a_sync_function_with_an_unencodable_result_fails_alone(journal_path: Path) -> None:
    _guarded(functools.partial(_sync_unencodable_result, journal_path))


async def _sync_unencodable_result(journal_path: Path) -> None:
    def bad() -> object:
        return _Opaque()

    def fine() -> int:
        return 7

    async with harnpool.open_pool(journal_path, max_concurrent=2) as pool:
        bad_id, fine_id = await pool.submit_many([harnpool.Job(bad), harnpool.Job(fine)])
        with anyio.fail_after(10):
            with pytest.raises(harnpool.TaskFailed, match="_Opaque"):
                await pool.wait(bad_id)
            assert await pool.wait(fine_id) == 7
    assert all_lines_decode(journal_path.read_bytes())
