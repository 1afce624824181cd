"""Validation at the door: a wrong argument is refused before anything is written.

Every public argument of ``open_pool``, ``Pool.submit``, ``Job``,
``Pool.submit_many``, ``Pool.wait`` and ``Pool.cancel`` is checked for type and
range at the call; the journal and the pool's memory stay exactly as they were,
the pool stays usable, and the journal reopens holding what was acknowledged.
An exception on the submit path, or in the writer's callbacks, never leaves
half a record behind or a writer that hangs.
"""

from __future__ import annotations

import datetime
import math
import shutil
import sys
import tempfile
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import harnpool
from harnpool import Job, Status
from harnpool._journal import Journal, load, open_journal
from harnpool._records import Header, TaskRecord

LONE = "\ud800"


async def noop() -> int:
    return 1


def names(path: Path) -> list[str]:
    """The ids a reopened journal holds (by loading it, without changing it)."""
    loaded = load(path)
    assert loaded is not None
    return list(loaded.tasks)


async def reopened_ids(path: Path) -> list[str]:
    async with harnpool.open_pool(path) as pool:
        return [info.id for info in pool.tasks()]


def record(seq: int, **changes: Any) -> TaskRecord:
    fields: dict[str, Any] = {
        "id": f"t{seq}",
        "seq": seq,
        "status": Status.QUEUED,
        "submitted_at": float(seq),
    }
    fields.update(changes)
    return TaskRecord(**fields)


# (options, the error, the parameter its message names)
BAD_OPTIONS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"key": 5}, TypeError, "key"),
    ({"key": b"raw"}, TypeError, "key"),
    ({"key": object()}, TypeError, "key"),
    ({"key": LONE}, ValueError, "key"),
    ({"key": "a" + LONE + "b"}, ValueError, "key"),
    ({"priority": 1.5}, TypeError, "priority"),
    ({"priority": True}, TypeError, "priority"),
    ({"priority": math.nan}, TypeError, "priority"),
    ({"priority": "high"}, TypeError, "priority"),
    ({"priority": None}, TypeError, "priority"),
    ({"priority": 2**63}, ValueError, "priority"),
    ({"priority": -(2**63) - 1}, ValueError, "priority"),
    ({"group": 7}, TypeError, "group"),
    ({"group": "\udfff"}, ValueError, "group"),
    ({"retries": 1.5}, TypeError, "retries"),
    ({"retries": True}, TypeError, "retries"),
    ({"retries": -1}, ValueError, "retries"),
    ({"retries": 2**63}, ValueError, "retries"),
    ({"retry_on": 5}, TypeError, "retry_on"),
    ({"retry_on": ValueError}, TypeError, "retry_on"),
    ({"retry_on": "ValueError"}, TypeError, "retry_on"),
    ({"retry_on": [ValueError("x")]}, TypeError, "retry_on"),
    ({"retry_on": [int]}, TypeError, "retry_on"),
    ({"timeout": True}, TypeError, "timeout"),
    ({"timeout": "1"}, TypeError, "timeout"),
    ({"timeout": 0}, ValueError, "timeout"),
    ({"timeout": -1.0}, ValueError, "timeout"),
    ({"timeout": math.nan}, ValueError, "timeout"),
    ({"timeout": math.inf}, ValueError, "timeout"),
    ({"timeout": 10**400}, ValueError, "timeout"),
    ({"delay": True}, TypeError, "delay"),
    ({"delay": "1"}, TypeError, "delay"),
    ({"delay": -1}, ValueError, "delay"),
    ({"delay": -0.5}, ValueError, "delay"),
    ({"delay": math.nan}, ValueError, "delay"),
    ({"delay": math.inf}, ValueError, "delay"),
    ({"delay": 1e300}, ValueError, "delay"),
    ({"run_at": 5.0}, TypeError, "run_at"),
    ({"run_at": "2030-01-01T00:00:00+00:00"}, TypeError, "run_at"),
    ({"run_at": datetime.date(2030, 1, 1)}, TypeError, "run_at"),
    ({"run_at": datetime.datetime(2030, 1, 1)}, ValueError, "run_at"),
    (
        {"delay": 1, "run_at": datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)},
        TypeError,
        "delay or run_at",
    ),
]


def _option_id(case: tuple[dict[str, Any], type[Exception], str]) -> str:
    return ",".join(f"{name}={type(value).__name__}:{value!r}" for name, value in case[0].items())[
        :40
    ]


class TestSubmitOptions:
    @pytest.mark.parametrize(
        ("options", "error", "parameter"), BAD_OPTIONS, ids=[_option_id(c) for c in BAD_OPTIONS]
    )
    async def test_a_wrong_option_is_refused_and_nothing_is_written(
        self,
        journal_path: Path,
        options: dict[str, Any],
        error: type[Exception],
        parameter: str,
    ) -> None:
        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path) as pool:
                before = journal_path.read_bytes()
                with pytest.raises(error, match=parameter) as info:
                    await pool.submit(noop, **options)
                assert not isinstance(info.value, harnpool.HarnpoolError)
                assert pool.tasks() == []
                assert journal_path.read_bytes() == before
                good = await pool.submit(noop, key="good")
                assert await pool.wait(good) == 1
            assert await reopened_ids(journal_path) == [good]

    @pytest.mark.parametrize(
        ("options", "error", "parameter"), BAD_OPTIONS, ids=[_option_id(c) for c in BAD_OPTIONS]
    )
    def test_a_bad_job_fails_where_it_is_built(
        self, options: dict[str, Any], error: type[Exception], parameter: str
    ) -> None:
        with pytest.raises(error, match=parameter):
            Job(noop, **options)

    def test_a_job_cannot_be_changed_after_its_checks(self) -> None:
        job = Job(noop, key="k")
        with pytest.raises(AttributeError):
            job.key = 5  # type: ignore[misc, assignment]
        with pytest.raises(AttributeError):
            del job.priority
        with pytest.raises(AttributeError):
            job.extra = 1  # type: ignore[attr-defined]
        assert (job.key, job.priority) == ("k", 0)

    def test_job_keeps_numbers_in_the_types_the_journal_stores(self) -> None:
        job = Job(noop, timeout=2, retry_on=iter([KeyError]))
        assert type(job.timeout) is float
        assert job.retry_on == (KeyError,)

    async def test_a_bytes_key_is_refused_so_it_cannot_run_again_after_a_restart(
        self, journal_path: Path
    ) -> None:
        # It used to be stored base64, so the reopened pool knew it under another key.
        async with harnpool.open_pool(journal_path) as pool:
            with pytest.raises(TypeError, match="key"):
                await pool.submit(noop, key=b"raw")  # type: ignore[call-overload, call-arg]
        assert names(journal_path) == []

    async def test_submit_many_checks_every_item_before_adding_any(
        self, journal_path: Path
    ) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            with pytest.raises(TypeError, match="jobs"):
                await pool.submit_many([Job(noop, key="a"), "not a job"])  # type: ignore[list-item]
            with pytest.raises(TypeError, match="jobs"):
                await pool.submit_many(5)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="jobs"):
                await pool.submit_many(Job(noop))  # type: ignore[arg-type]
            assert pool.tasks() == []
            ids = await pool.submit_many([Job(noop, key="a")])
        assert await reopened_ids(journal_path) == ids

    async def test_a_coroutine_object_names_fn(self, journal_path: Path) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            with pytest.raises(TypeError, match="fn"):
                await pool.submit(noop())  # type: ignore[call-overload]
            with pytest.raises(TypeError, match="fn"):
                Job(None)  # type: ignore[arg-type]

    async def test_an_unstorable_function_name_does_not_stop_the_submit(
        self, journal_path: Path
    ) -> None:
        async def strange() -> int:
            return 2

        strange.__qualname__ = "strange" + LONE
        async with harnpool.open_pool(journal_path) as pool:
            assert await pool.wait(await pool.submit(strange)) == 2
        assert await reopened_ids(journal_path) == ["t1"]


class TestWaitCancelInfo:
    @pytest.mark.parametrize("task_id", [1, None, b"t1", ("t1",), ["t1"]])
    async def test_a_task_id_that_is_not_a_str_is_a_type_error(
        self, journal_path: Path, task_id: Any
    ) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            await pool.wait(await pool.submit(noop))
            with pytest.raises(TypeError, match="task_id"):
                await pool.wait(task_id)
            with pytest.raises(TypeError, match="task_id"):
                await pool.cancel(task_id)
            with pytest.raises(TypeError, match="task_id"):
                pool.info(task_id)

    @pytest.mark.parametrize(
        ("timeout", "error"),
        [
            (-1, ValueError),
            (-0.5, ValueError),
            (math.nan, ValueError),
            (math.inf, ValueError),
            (True, TypeError),
            ("1", TypeError),
        ],
    )
    async def test_a_wrong_wait_timeout_is_refused(
        self, journal_path: Path, timeout: Any, error: type[Exception]
    ) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            task_id = await pool.submit(noop)
            with pytest.raises(error, match="timeout"):
                await pool.wait(task_id, timeout=timeout)
            assert await pool.wait(task_id, timeout=5) == 1


# (settings, the error, the parameter its message names)
BAD_SETTINGS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"max_concurrent": 2.0}, TypeError, "max_concurrent"),
    ({"max_concurrent": True}, TypeError, "max_concurrent"),
    ({"max_concurrent": "2"}, TypeError, "max_concurrent"),
    ({"max_concurrent": 0}, ValueError, "max_concurrent"),
    ({"max_concurrent": 2**63}, ValueError, "max_concurrent"),
    ({"max_queued": 0}, ValueError, "max_queued"),
    ({"max_queued": 1.5}, TypeError, "max_queued"),
    ({"max_queued": False}, TypeError, "max_queued"),
    ({"on_full": "wait"}, ValueError, "on_full"),
    ({"on_full": None}, TypeError, "on_full"),
    ({"strategy": "random"}, ValueError, "strategy"),
    ({"strategy": 1}, TypeError, "strategy"),
    ({"start": "lazy"}, ValueError, "start"),
    ({"start": None}, TypeError, "start"),
    ({"aging": 0}, ValueError, "aging"),
    ({"aging": -1.0}, ValueError, "aging"),
    ({"aging": math.nan}, ValueError, "aging"),
    ({"aging": 5e-324}, ValueError, "aging"),
    ({"aging": True}, TypeError, "aging"),
    ({"retries": -1}, ValueError, "retries"),
    ({"retries": None}, TypeError, "retries"),
    ({"retries": 1.0}, TypeError, "retries"),
    ({"retry_on": 5}, TypeError, "retry_on"),
    ({"retry_on": ["x"]}, TypeError, "retry_on"),
    ({"retry_backoff": -1}, ValueError, "retry_backoff"),
    ({"retry_backoff": math.inf}, ValueError, "retry_backoff"),
    ({"retry_backoff": "1"}, TypeError, "retry_backoff"),
    ({"retry_backoff": 2.0, "retry_backoff_max": 1.0}, ValueError, "retry_backoff_max"),
    ({"retry_backoff_max": math.nan}, ValueError, "retry_backoff_max"),
    ({"timeout": 0}, ValueError, "timeout"),
    ({"timeout": math.nan}, ValueError, "timeout"),
    ({"keep_finished": -1}, ValueError, "keep_finished"),
    ({"keep_finished": True}, TypeError, "keep_finished"),
    ({"keep_finished": 1.5}, TypeError, "keep_finished"),
    ({"keep_finished_for": -1}, ValueError, "keep_finished_for"),
    ({"keep_finished_for": math.nan}, ValueError, "keep_finished_for"),
    ({"keep_finished_for": False}, TypeError, "keep_finished_for"),
]


def _setting_id(case: tuple[dict[str, Any], type[Exception], str]) -> str:
    return ",".join(f"{k}={v!r}" for k, v in case[0].items())[:40]


@pytest.fixture
def existing_journal(journal_path: Path) -> Path:
    """A journal with a finished task, in a form the next open would compact."""

    async def fill() -> None:
        async with harnpool.open_pool(journal_path) as pool:
            await pool.wait(await pool.submit(noop, key="done"))

    anyio.run(fill)
    # Its queued and completed lines (running rode with completed, in one flush):
    # compacting on open would rewrite them as one.
    assert journal_path.read_bytes().count(b"\n") == 3
    return journal_path


class TestOpenPoolSettings:
    @pytest.mark.parametrize(
        ("settings", "error", "parameter"),
        BAD_SETTINGS,
        ids=[_setting_id(c) for c in BAD_SETTINGS],
    )
    async def test_a_wrong_setting_is_refused_before_the_lock_and_the_file_stays(
        self,
        existing_journal: Path,
        settings: dict[str, Any],
        error: type[Exception],
        parameter: str,
    ) -> None:
        path = existing_journal
        async with harnpool.open_pool(path):
            # Refused before the lock: not JournalLockedError although a pool holds it.
            with pytest.raises(error, match=parameter):
                async with harnpool.open_pool(path, **settings):
                    pass  # pragma: no cover
        before = path.read_bytes()
        with pytest.raises(error, match=parameter):
            async with harnpool.open_pool(path, **settings):
                pass  # pragma: no cover
        assert path.read_bytes() == before
        # The lock is free, and the journal is whole.
        assert await reopened_ids(path) == ["t1"]

    @pytest.mark.parametrize(
        ("path", "error"),
        [(5, TypeError), (None, TypeError), (b"pool.jsonl", TypeError), ("", ValueError)],
    )
    async def test_a_wrong_path_is_refused(self, path: Any, error: type[Exception]) -> None:
        with pytest.raises(error, match="path"):
            async with harnpool.open_pool(path):
                pass  # pragma: no cover

    async def test_a_path_with_a_nul_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="path"):
            async with harnpool.open_pool(str(tmp_path / "a\0b.jsonl")):
                pass  # pragma: no cover
        assert list(tmp_path.iterdir()) == []

    async def test_a_float_max_concurrent_no_longer_bricks_the_journal(
        self, existing_journal: Path
    ) -> None:
        before = existing_journal.read_bytes()
        for wrong in (2.0, True):
            with pytest.raises(TypeError, match="max_concurrent"):
                async with harnpool.open_pool(existing_journal, max_concurrent=wrong):  # type: ignore[arg-type]
                    pass  # pragma: no cover
        assert existing_journal.read_bytes() == before
        assert await reopened_ids(existing_journal) == ["t1"]

    async def test_aging_zero_leaves_no_lock_behind(self, existing_journal: Path) -> None:
        with pytest.raises(ValueError, match="aging"):
            async with harnpool.open_pool(existing_journal, aging=0):
                pass  # pragma: no cover
        async with harnpool.open_pool(existing_journal, aging=1.0) as pool:
            assert [info.id for info in pool.tasks()] == ["t1"]

    async def test_a_failure_after_the_lock_releases_it(
        self, journal_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A queued task of a registered function whose module fails to import:
        # recovering it raises while the lock is held.
        module = "harnpool_test_broken_module"
        (tmp_path / f"{module}.py").write_text("raise RuntimeError('broken at import')\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        header = Header(format=1, pool_id="p", created_at=1.0, max_concurrent=1, submit_counter=1)
        encoder = msgspec.json.Encoder()
        journal_path.write_bytes(
            b"".join(encoder.encode(r) + b"\n" for r in (header, record(1, name=f"{module}:work")))
        )
        with pytest.raises(RuntimeError):
            async with harnpool.open_pool(journal_path):
                pass  # pragma: no cover
        (tmp_path / f"{module}.py").write_text("")
        sys.modules.pop(module, None)
        async with harnpool.open_pool(journal_path) as pool:
            assert pool.recovery.unresolved == ("t1",)


class TestAtomicAppend:
    @pytest.mark.parametrize(("bad", "error"), [(object(), TypeError), (LONE, ValueError)])
    async def test_a_record_that_fails_to_encode_leaves_the_batch_as_it_was(
        self, journal_path: Path, bad: Any, error: type[Exception]
    ) -> None:
        journal = Journal(open_journal(journal_path, max_concurrent=1))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(journal.run)
                first = journal.append(record(1))
                pending = bytes(journal._pending.buf)
                with pytest.raises(error):
                    journal.append(record(2, key=bad))
                assert bytes(journal._pending.buf) == pending
                second = journal.append(record(3, key="k"))
                with anyio.fail_after(10):
                    await first.wait()
                    await second.wait()
                journal.stop()
        finally:
            journal.close()
        assert names(journal_path) == ["t1", "t3"]

    async def test_a_failed_append_leaves_the_pool_as_before_the_submit(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async with harnpool.open_pool(journal_path) as pool:
            journal = pool._storage
            real = journal.append

            def refuse(record: TaskRecord) -> Any:
                raise OverflowError("refused")

            before = pool.statistics()
            monkeypatch.setattr(journal, "append", refuse)
            with pytest.raises(OverflowError):
                await pool.submit(noop, key="k")
            monkeypatch.setattr(journal, "append", real)
            assert pool.tasks() == []
            assert pool.statistics() == before
            task_id = await pool.submit(noop, key="k")
            assert task_id == "t1"  # the counter did not move either
            assert await pool.wait(task_id) == 1
        assert await reopened_ids(journal_path) == ["t1"]


class TestWriterFailure:
    async def test_a_raising_durable_callback_fails_the_pool_instead_of_hanging(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with anyio.fail_after(10):
            with pytest.raises(harnpool.JournalWriteError) as leaving:
                async with harnpool.open_pool(journal_path) as pool:

                    def broken(task: object) -> None:
                        raise RuntimeError("callback broke")

                    monkeypatch.setattr(pool._tasks.ready, "put", broken)
                    with pytest.raises(harnpool.JournalWriteError, match="callback broke") as info:
                        await pool.submit(noop)
                    assert isinstance(info.value.__cause__, RuntimeError)
                    with pytest.raises(harnpool.JournalWriteError):
                        await pool.submit(noop)
        assert leaving.value is info.value
        # What was written before the failure is durable and whole.
        assert names(journal_path) == ["t1"]

    async def test_every_callback_runs_and_every_waiter_wakes_when_one_raises(
        self, journal_path: Path
    ) -> None:
        journal = Journal(open_journal(journal_path, max_concurrent=1))
        ran: list[str] = []
        failures: list[harnpool.JournalWriteError] = []
        journal.on_failure = failures.append

        def broken() -> None:
            ran.append("broken")
            raise RuntimeError("callback broke")

        try:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(journal.run)
                    batch = journal.append(record(1))
                    batch.on_durable.append(broken)
                    batch.on_durable.append(lambda: ran.append("after"))
                    with pytest.raises(harnpool.JournalWriteError):
                        await batch.wait()
                    # The writer stopped on its own; later appends are refused at once.
                    with pytest.raises(harnpool.JournalWriteError):
                        await journal.append(record(2)).wait()
                    with pytest.raises(harnpool.JournalWriteError):
                        await journal.flush()
        finally:
            journal.close()
        assert ran == ["broken", "after"]
        assert len(failures) == 1
        assert isinstance(failures[0].__cause__, RuntimeError)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


async def raise_lone_surrogate() -> None:
    raise ValueError("bad " + LONE)


async def raise_unprintable() -> None:
    raise Unprintable


class TestTaskErrorText:
    @pytest.mark.parametrize("fn", [raise_lone_surrogate, raise_unprintable])
    async def test_an_error_whose_text_cannot_be_stored_only_fails_its_task(
        self, journal_path: Path, fn: Any
    ) -> None:
        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path) as pool:
                failing = await pool.submit(fn)
                with pytest.raises(harnpool.TaskFailed) as info:
                    await pool.wait(failing)
                assert isinstance(info.value.__cause__, ValueError | Unprintable)
                assert info.value.error_message.encode("utf-8")
                assert await pool.wait(await pool.submit(noop)) == 1
            async with harnpool.open_pool(journal_path) as pool:
                assert [i.status for i in pool.tasks()] == [Status.FAILED, Status.COMPLETED]


# -- every parameter, any wrong value ----------------------------------------------------

_NOT_NUMBERS = st.one_of(
    st.text(max_size=3),
    st.binary(max_size=3),
    st.complex_numbers(max_magnitude=10),
    st.lists(st.integers(), max_size=2),
    st.sampled_from([object(), Decimal(1), Fraction(1, 3), {"n": 1}]),
)
_NOT_INTS = st.one_of(st.booleans(), st.floats(), _NOT_NUMBERS)
_UNFINITE = st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(10**400)])


def _bad_int(minimum: int, *, none_ok: bool) -> st.SearchStrategy[Any]:
    wrong = [_NOT_INTS, st.integers(max_value=minimum - 1), st.integers(min_value=2**63)]
    return st.one_of(*wrong, *([] if none_ok else [st.none()]))


def _bad_seconds(*, positive: bool, none_ok: bool) -> st.SearchStrategy[Any]:
    below = (
        st.floats(max_value=0.0, allow_nan=False, allow_infinity=False)
        if positive
        else st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False)
    )
    wrong = [st.booleans(), _NOT_NUMBERS, _UNFINITE, below, st.integers(max_value=-1)]
    return st.one_of(*wrong, *([] if none_ok else [st.none()]))


_LONE_SURROGATE = st.tuples(
    st.text(max_size=3), st.characters(categories=["Cs"]), st.text(max_size=3)
).map("".join)
_BAD_TEXT = st.one_of(
    st.integers(), st.binary(max_size=3), st.booleans(), st.floats(), _LONE_SURROGATE
)
_BAD_RETRY_ON = st.one_of(
    st.integers(),
    st.text(max_size=3),
    st.just(ValueError),
    st.lists(
        st.one_of(st.integers(), st.text(max_size=2), st.just(int), st.just(ValueError("x"))),
        min_size=1,
        max_size=3,
    ),
)


def _bad_choice(choices: tuple[str, ...]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.text(max_size=8).filter(lambda t: t not in choices), st.none(), st.integers()
    )


_TASK_OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "key": _BAD_TEXT,
    "priority": _bad_int(-(2**63), none_ok=False),
    "group": _BAD_TEXT,
    "retries": _bad_int(0, none_ok=True),
    "retry_on": _BAD_RETRY_ON,
    "timeout": _bad_seconds(positive=True, none_ok=True),
    "delay": _bad_seconds(positive=False, none_ok=True),
}
_POOL_SETTINGS: dict[str, st.SearchStrategy[Any]] = {
    "max_concurrent": _bad_int(1, none_ok=False),
    "max_queued": _bad_int(1, none_ok=True),
    "on_full": _bad_choice(("block", "reject", "drop_oldest", "drop_newest")),
    "strategy": _bad_choice(("priority", "fifo", "lifo", "fair")),
    "start": _bad_choice(("strict", "eager")),
    "aging": _bad_seconds(positive=True, none_ok=True),
    "retries": _bad_int(0, none_ok=False),
    "retry_on": _BAD_RETRY_ON,
    "retry_backoff": _bad_seconds(positive=False, none_ok=False),
    "retry_backoff_max": _bad_seconds(positive=False, none_ok=False),
    "timeout": _bad_seconds(positive=True, none_ok=True),
    "keep_finished": _bad_int(0, none_ok=True),
    "keep_finished_for": _bad_seconds(positive=False, none_ok=True),
    "path": st.one_of(st.integers(), st.binary(max_size=3), st.none(), st.just("")),
}
_NOT_STR = st.one_of(st.integers(), st.binary(max_size=3), st.none(), st.floats(), st.tuples())


@st.composite
def _bad_calls(draw: st.DrawFn) -> tuple[str, str, Any]:
    """One wrong call: (what is called, the parameter named in the error, the value)."""
    target = draw(
        st.sampled_from(
            ["submit", "job", "fn", "submit_many", "wait", "wait_timeout", "cancel", "open"]
        )
    )
    if target in ("submit", "job"):
        name = draw(st.sampled_from(sorted(_TASK_OPTIONS)))
        return target, name, draw(_TASK_OPTIONS[name])
    if target == "open":
        name = draw(st.sampled_from(sorted(_POOL_SETTINGS)))
        return target, name, draw(_POOL_SETTINGS[name])
    if target == "fn":
        return (
            target,
            "fn",
            draw(st.one_of(st.just("a coroutine object"), st.integers(), st.none())),
        )
    if target == "submit_many":
        items = st.lists(st.one_of(st.integers(), st.text(max_size=2), st.none()), min_size=1)
        return target, "jobs", draw(st.one_of(st.integers(), st.none(), items))
    if target == "wait_timeout":
        return target, "timeout", draw(_bad_seconds(positive=False, none_ok=True))
    return target, "task_id", draw(_NOT_STR)


async def _call(pool: harnpool.Pool, path: Path, call: tuple[str, str, Any], known: str) -> None:
    target, name, value = call
    if target == "submit":
        await pool.submit(noop, **{name: value})
    elif target == "job":
        Job(noop, **{name: value})
    elif target == "fn":
        fn: Any = noop() if value == "a coroutine object" else value
        await pool.submit(fn)
    elif target == "submit_many":
        await pool.submit_many(value if not isinstance(value, list) else [Job(noop), *value])
    elif target == "wait":
        await pool.wait(value)
    elif target == "wait_timeout":
        await pool.wait(known, timeout=value)
    elif target == "cancel":
        await pool.cancel(value)
    else:
        where = value if name == "path" else path
        settings = {} if name == "path" else {name: value}
        async with harnpool.open_pool(where, **settings):
            pass  # pragma: no cover - refused on the way in


async def _drive(path: Path, calls: list[tuple[str, str, Any]]) -> None:
    acknowledged: list[str] = []
    with anyio.fail_after(20):
        async with harnpool.open_pool(path) as pool:
            known = await pool.submit(noop)
            await pool.wait(known)
            acknowledged.append(known)
            for call in calls:
                before = (path.read_bytes(), pool.statistics(), pool.tasks())
                with pytest.raises((TypeError, ValueError)) as info:
                    await _call(pool, path, call, known)
                assert not isinstance(info.value, harnpool.HarnpoolError), info.value
                assert call[1] in str(info.value)
                assert (path.read_bytes(), pool.statistics(), pool.tasks()) == before
                # Still usable: a good submit is acknowledged and runs.
                task_id = await pool.submit(noop, key=f"good-{len(acknowledged)}")
                assert await pool.wait(task_id) == 1
                acknowledged.append(task_id)
        async with harnpool.open_pool(path) as pool:
            infos = pool.tasks()
    assert [info.id for info in infos] == acknowledged
    assert {info.status for info in infos} == {Status.COMPLETED}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(calls=st.lists(_bad_calls(), min_size=1, max_size=4))
def test_every_parameter_refuses_wrong_values_and_the_pool_goes_on(
    backend: str, calls: list[tuple[str, str, Any]]
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="harnpool-validation-"))
    try:
        anyio.run(_drive, directory / "pool.jsonl", calls, backend=backend)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
