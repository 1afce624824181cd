"""Model-based tests: random pool histories against a simple in-memory model.

A hypothesis state machine drives a real pool (on an event loop in a blocking
portal) with submit (with and without keys, any priority), finish, fail, crash
(leaving the block by an exception: running tasks stay ``running`` in the
journal) and clean reopen, and checks the pool against a dictionary model after
every step: statuses, results, key dedupe, stable ids, ``running`` back to
``queued`` on reopen, and a submit counter that never goes backwards.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import harnpool

from ._loader_helpers import assert_load_matches_model, fill_journal, model_load, split_lines

RESULTS = st.one_of(
    st.integers(-(2**53), 2**53),
    st.text(max_size=8),
    st.lists(st.integers(0, 9), max_size=3),
    st.none(),
)


@dataclass
class ModelTask:
    key: str | None
    priority: int
    seq: int
    status: str = "unfinished"  # or "completed", "failed"
    result: Any = None
    error: str = ""
    #: Whether this process knows the function (it was submitted since the last open).
    attached: bool = True


@dataclass
class Control:
    """How the test tells a running task to end."""

    release: anyio.Event = field(default_factory=anyio.Event)
    outcome: tuple[str, Any] = ("completed", None)


class _Crash(Exception):
    pass


class PoolMachine(RuleBasedStateMachine):
    tasks = Bundle("tasks")
    #: The pool's ``start`` setting.
    start: Literal["strict", "eager"] = "strict"

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="harnpool-model-"))
        self.path = self.directory / "journal.jsonl"
        self.exits = contextlib.ExitStack()
        self.portal = self.exits.enter_context(anyio.from_thread.start_blocking_portal())
        self.model: dict[str, ModelTask] = {}
        self.controls: dict[str, Control] = {}
        self.highest_seq = 0
        self._open()

    # -- the pool, on the portal's loop -----------------------------------------------

    def _open(self) -> None:
        self.manager = self.portal.wrap_async_context_manager(
            harnpool.open_pool(self.path, max_concurrent=64, start=self.start)
        )
        self.pool = self.manager.__enter__()
        self.controls = {}
        requeued = set(self.pool.recovery.requeued)
        for task_id, task in self.model.items():
            task.attached = False
            if task.status == "unfinished":
                assert self.portal.call(self.pool.info, task_id).status is harnpool.Status.QUEUED
            else:
                assert task_id not in requeued

    @staticmethod
    async def _task(control: Control) -> Any:
        await control.release.wait()
        kind, value = control.outcome
        if kind == "failed":
            raise ValueError(value)
        return value

    def _submit(self, key: str | None, priority: int) -> str:
        # The id is known only after submit returns, and with start="eager" the task
        # may run before that: it is handed its control, which is kept under its id
        # unless the id's task already has one (a known key, still attached).
        pending = Control()

        async def submit() -> str:
            async def run() -> Any:
                return await self._task(pending)

            task_id: str = await self.pool.submit(run, key=key, priority=priority)
            self.controls.setdefault(task_id, pending)
            return task_id

        return self.portal.call(submit)

    # -- rules ------------------------------------------------------------------------

    @rule(
        target=tasks,
        key=st.one_of(st.none(), st.sampled_from("abcde")),
        priority=st.integers(-2, 2),
    )
    def submit(self, key: str | None, priority: int) -> str:
        task_id = self._submit(key, priority)
        known = next((i for i, t in self.model.items() if key is not None and t.key == key), None)
        if known is not None:
            assert task_id == known, "a known key got a new id"
            task = self.model[known]
            if task.status == "unfinished" and not task.attached:
                task.attached = True  # re-attached: it runs now, in its old place
        else:
            assert task_id not in self.model, "an id was reused"
            seq = self.portal.call(self.pool.info, task_id).seq
            assert seq > self.highest_seq, "the submit counter went backwards"
            self.highest_seq = seq
            self.model[task_id] = ModelTask(key=key, priority=priority, seq=seq)
        return task_id

    def _end(self, task_id: str, kind: str, value: Any) -> None:
        task = self.model[task_id]
        if task.status != "unfinished" or not task.attached:
            return
        control = self.controls[task_id]
        control.outcome = (kind, value)
        self.portal.call(control.release.set)

        async def wait() -> tuple[str, Any]:
            with anyio.fail_after(10):
                try:
                    return "completed", await self.pool.wait(task_id)
                except harnpool.TaskFailed as exc:
                    return "failed", exc.error_message

        assert self.portal.call(wait) == (kind, value)
        task.status, task.result = kind, value

    @rule(task_id=tasks, value=RESULTS)
    def finish(self, task_id: str, value: Any) -> None:
        self._end(task_id, "completed", value)

    @rule(task_id=tasks, message=st.text(max_size=6))
    def fail(self, task_id: str, message: str) -> None:
        self._end(task_id, "failed", message)

    @rule()
    def crash(self) -> None:
        # Leaving by an exception cancels running tasks; they stay running in the journal.
        crash = _Crash()
        assert not self.manager.__exit__(_Crash, crash, None), "the pool swallowed an exception"
        self._open()

    @precondition(
        lambda self: not any(t.attached and t.status == "unfinished" for t in self.model.values())
    )
    @rule()
    def reopen(self) -> None:
        self.manager.__exit__(None, None, None)
        self._open()

    @rule(task_id=consumes(tasks))
    def wait_for_a_finished_task(self, task_id: str) -> None:
        task = self.model[task_id]
        if task.status == "unfinished":
            return

        async def wait() -> tuple[str, Any]:
            try:
                return "completed", await self.pool.wait(task_id)
            except harnpool.TaskFailed as exc:
                return "failed", exc.error_message

        assert self.portal.call(wait) == (task.status, task.result)

    # -- what must always hold --------------------------------------------------------

    @invariant()
    def pool_matches_model(self) -> None:
        infos = {info.id: info for info in self.portal.call(self.pool.tasks)}
        assert infos.keys() == self.model.keys()
        for task_id, task in self.model.items():
            info = infos[task_id]
            assert (info.key, info.priority, info.seq) == (task.key, task.priority, task.seq)
            if task.status == "unfinished":
                expected = {"queued", "running"} if task.attached else {"queued"}
                assert info.status in expected, (task_id, info.status)
            else:
                assert info.status == task.status
        keys = [t.key for t in self.model.values() if t.key is not None]
        assert len(keys) == len(set(keys)), "two tasks share a key"

    def teardown(self) -> None:
        try:
            self.manager.__exit__(_Crash, _Crash(), None)
            self.exits.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


PoolMachine.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pool_against_the_model = PoolMachine.TestCase


class EagerPoolMachine(PoolMachine):
    """The same histories on a pool that starts tasks before their submit is durable."""

    start: Literal["strict", "eager"] = "eager"


EagerPoolMachine.TestCase.settings = PoolMachine.TestCase.settings
test_eager_pool_against_the_model = EagerPoolMachine.TestCase


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pool_against_the_model_at_length() -> None:
    run = settings(PoolMachine.TestCase.settings, max_examples=300, stateful_step_count=40)
    run_state_machine_as_test(PoolMachine, settings=run)


# -- replaying prefixes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_journal(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("prefix") / "journal.jsonl"
    anyio.run(functools.partial(fill_journal, path, tasks=10, keep_open=True))
    return path.read_bytes()


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_every_line_prefix_replays_to_the_model(real_journal: bytes, data: st.DataObject) -> None:
    lines = split_lines(real_journal)
    count = data.draw(st.integers(1, len(lines)), label="lines kept")
    prefix = b"".join(raw + b"\n" for _, raw in lines[:count])
    directory = Path(tempfile.mkdtemp(prefix="harnpool-prefix-"))
    try:
        path = directory / "journal.jsonl"
        path.write_bytes(prefix)
        loaded = assert_load_matches_model(path, prefix)
        assert loaded is not None
        assert loaded.torn is None
        # The model, spelled out: the last record of each id among the lines kept.
        last: dict[str, str] = {}
        for _, raw in lines[1:count]:
            record = model_load(lines[0][1] + b"\n" + raw + b"\n").tasks
            for task_id, task in record.items():
                last[task_id] = task.status
        assert {i: r.status for i, r in loaded.tasks.items()} == last
    finally:
        shutil.rmtree(directory, ignore_errors=True)
