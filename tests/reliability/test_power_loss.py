"""Power loss, simulated: rebuild every file state a power cut could leave, and load each.

A real pool run records, in order, every ``open``, ``write``, ``fsync``,
``fdatasync``, ``replace`` and ``close`` the journal module makes (its ``os`` is
replaced by a recorder that calls the real functions), interleaved with what the
pool acknowledged: each id ``submit`` returned and each outcome ``wait`` returned.

A power cut after any prefix of that sequence leaves, for each file, everything
fsynced plus any prefix of what was written after its last fsync; and for the
directory, every name change up to its last fsync plus any prefix of the later
ones (so before the directory fsync a rename may or may not be visible). Every
such state of the journal's name is written out and loaded with ``load``, and a
sample is opened with ``open_pool``; each must show every acknowledged submit,
every acknowledged outcome with its result, only records the pool really wrote,
and a torn tail exactly when the cut fell inside a line.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
import pytest

import harnpool
from harnpool import _journal
from harnpool._records import Status, TaskRecord
from tests.reliability.conftest import ReportFigures


class Recorder:
    """Stands in for the ``os`` module inside ``harnpool._journal`` and logs file operations."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def log(self, *event: Any) -> None:
        with self._lock:
            self.events.append(event)

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        fd = os.open(path, flags, mode)
        self.log("open", os.path.abspath(path), flags, fd)
        return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        written = os.write(fd, data)
        self.log("write", fd, bytes(data[:written]))
        return written

    def fsync(self, fd: int) -> None:
        os.fsync(fd)
        self.log("fsync", fd)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)
        self.log("fsync", fd)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)
        self.log("replace", os.path.abspath(src), os.path.abspath(dst))

    def close(self, fd: int) -> None:
        os.close(fd)
        self.log("close", fd)


@dataclass
class _Inode:
    data: bytearray = field(default_factory=bytearray)
    synced: int = 0


@dataclass
class Acks:
    """What the pool had acknowledged when the power went."""

    submitted: dict[str, str | None] = field(default_factory=dict)
    #: id -> ("completed", result JSON) or ("failed", error type)
    finished: dict[str, tuple[str, bytes]] = field(default_factory=dict)


def power_cut_states(
    events: list[tuple[Any, ...]], journal: str
) -> Iterator[tuple[int, Acks, set[bytes | None]]]:
    """Yield ``(position, acks, possible journal contents)`` for a cut after each event.

    ``None`` stands for "no file by the journal's name".
    """
    inodes: list[_Inode] = []
    fds: dict[int, int] = {}  # fd -> inode number; -1 for a directory
    names: dict[str, int] = {}
    dir_ops: list[tuple[str, str, Any]] = []
    dir_synced = 0
    acks = Acks()
    directory = os.path.dirname(journal)
    for position, event in enumerate(events, 1):
        kind = event[0]
        if kind == "open":
            _, path, flags, fd = event
            if path == directory:
                fds[fd] = -1
            elif path in names:
                assert not flags & os.O_TRUNC, "the model does not truncate old files"
                fds[fd] = names[path]
            else:
                inodes.append(_Inode())
                fds[fd] = names[path] = len(inodes) - 1
                dir_ops.append(("link", path, fds[fd]))
        elif kind == "write":
            inodes[fds[event[1]]].data += event[2]
        elif kind == "fsync":
            number = fds[event[1]]
            if number == -1:
                dir_synced = len(dir_ops)
            else:
                inodes[number].synced = len(inodes[number].data)
        elif kind == "replace":
            _, src, dst = event
            names[dst] = names.pop(src)
            dir_ops.append(("rename", src, dst))
        elif kind == "close":
            fds.pop(event[1], None)
        elif kind == "submitted":
            acks.submitted[event[1]] = event[2]
        elif kind == "finished":
            acks.finished[event[1]] = event[2]
        contents: set[bytes | None] = set()
        for visible in range(dir_synced, len(dir_ops) + 1):
            seen: dict[str, int] = {}
            for op, name, arg in dir_ops[:visible]:
                if op == "link":
                    seen[name] = arg
                else:
                    seen[arg] = seen.pop(name)
            if journal not in seen:
                contents.add(None)
                continue
            inode = inodes[seen[journal]]
            for length in range(inode.synced, len(inode.data) + 1):
                contents.add(bytes(inode.data[:length]))
        yield position, Acks(dict(acks.submitted), dict(acks.finished)), contents


# -- the recorded run -----------------------------------------------------------------


async def _double(n: int) -> dict[str, int]:
    await anyio.lowlevel.checkpoint()
    return {"n": n, "double": 2 * n}


def _square(n: int) -> list[int]:
    return [n, n * n]


async def _refuse(n: int) -> int:
    raise ValueError(f"refused {n}")


class _Abandon(Exception):
    """Leaves a pool's block by an exception, so running tasks stay running."""


async def _record_run(path: Path, recorder: Recorder) -> None:
    """Two sessions on one journal: the first is abandoned with a task running."""

    async def wait_for(pool: harnpool.Pool, task_id: str) -> None:
        try:
            value = await pool.wait(task_id)
        except harnpool.TaskFailed as exc:
            recorder.log("finished", task_id, ("failed", exc.error_type.encode()))
        else:
            recorder.log("finished", task_id, ("completed", msgspec.json.encode(value)))

    async def submit(
        pool: harnpool.Pool, tg: anyio.abc.TaskGroup, fn: Any, n: int, *, wait: bool = True
    ) -> None:
        task_id = await pool.submit(fn, n, key=f"k{n}", priority=n % 3)
        recorder.log("submitted", task_id, f"k{n}")
        if wait:
            tg.start_soon(wait_for, pool, task_id)

    functions: list[Any] = [_double, _square, _refuse]
    never = anyio.Event()

    async def blocked(n: int) -> int:
        await never.wait()
        return n

    with pytest.raises(_Abandon):
        async with harnpool.open_pool(path, max_concurrent=2) as pool:
            async with anyio.create_task_group() as tg:
                await submit(pool, tg, blocked, 0, wait=False)
                for n in range(1, 6):
                    await submit(pool, tg, functions[n % 3], n)
                for n in range(6, 12):  # concurrent submitters share flushes
                    tg.start_soon(submit, pool, tg, functions[n % 3], n)
                jobs = [harnpool.Job(functions[n % 3], n, key=f"k{n}") for n in range(12, 16)]
                for n, task_id in zip(range(12, 16), await pool.submit_many(jobs), strict=True):
                    recorder.log("submitted", task_id, f"k{n}")
                    tg.start_soon(wait_for, pool, task_id)
            raise _Abandon  # leave with k0 running: it stays "running" in the journal

    async with harnpool.open_pool(path, max_concurrent=2) as pool:
        assert pool.recovery.requeued
        async with anyio.create_task_group() as tg:
            await submit(pool, tg, _double, 0)  # re-attaches the interrupted task
            for n in range(16, 22):
                tg.start_soon(submit, pool, tg, functions[n % 3], n)


# -- the checks -------------------------------------------------------------------------


def _written_records(events: list[tuple[Any, ...]]) -> dict[str, set[bytes]]:
    """Every task record the pool wrote, by id, as JSON."""
    written: dict[str, set[bytes]] = {}
    for event in events:
        if event[0] == "write":
            for line in event[2].split(b"\n"):
                if line.startswith(b'{"kind":"task"'):
                    record = msgspec.json.decode(line, type=TaskRecord)
                    written.setdefault(record.id, set()).add(msgspec.json.encode(record))
    return written


def _problems(
    loaded: _journal.Loaded | None,
    content: bytes | None,
    acks: Acks,
    written: dict[str, set[bytes]],
) -> list[str]:
    if loaded is None:
        return [f"{len(acks.submitted)} acknowledged tasks but no journal"] * bool(acks.submitted)
    assert content is not None
    problems = []
    mid_line = not content.endswith(b"\n")
    if mid_line != (loaded.torn is not None):
        problems.append(
            f"torn tail {loaded.torn} for a cut {'inside' if mid_line else 'at'} a line"
        )
    if loaded.torn is not None and loaded.torn.offset != content.rfind(b"\n") + 1:
        problems.append(f"torn tail at the wrong offset: {loaded.torn}")
    for task_id, key in acks.submitted.items():
        if task_id not in loaded.tasks or loaded.tasks[task_id].key != key:
            problems.append(f"acknowledged {task_id} ({key}) is missing")
    for task_id, (status, value) in acks.finished.items():
        record = loaded.tasks.get(task_id)
        if record is None or record.status != status:
            problems.append(f"{task_id} was acknowledged {status}, found {record}")
        elif record.status is Status.COMPLETED:
            assert not isinstance(record.result, msgspec.UnsetType)
            if bytes(record.result) != value:
                problems.append(f"{task_id} has result {bytes(record.result)!r}, not {value!r}")
        elif (record.error_type or "").encode() != value:
            problems.append(f"{task_id} failed with {record.error_type}, not {value!r}")
    for task_id, record in loaded.tasks.items():
        if msgspec.json.encode(record) not in written.get(task_id, set()):
            problems.append(f"{task_id} is in a state the pool never wrote: {record}")
    return problems


async def _open_state(directory: Path, content: bytes, acks: Acks) -> list[str]:
    """Open a pool on one power-cut state and check what recovery reports."""
    path = directory / "state.jsonl"
    path.write_bytes(content)
    problems = []
    async with harnpool.open_pool(path) as pool:
        mid_line = not content.endswith(b"\n")
        if mid_line != (pool.recovery.torn_tail is not None):
            problems.append(f"open_pool reported torn tail {pool.recovery.torn_tail}")
        for task_id, (status, value) in acks.finished.items():
            if status == "completed":
                if msgspec.json.encode(await pool.wait(task_id)) != value:
                    problems.append(f"open_pool lost the result of {task_id}")
            elif pool.info(task_id).status != status:
                problems.append(f"open_pool has {task_id} {pool.info(task_id).status}")
        for task_id in acks.submitted:
            pool.info(task_id)  # raises UnknownTaskError if it was lost
    return problems


async def power_loss(directory: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    journal = directory / "run" / "pool.jsonl"
    journal.parent.mkdir()
    recorder = Recorder()
    with monkeypatch.context() as patch:
        patch.setattr(_journal, "os", recorder)
        patch.setattr(_journal, "_sync_data", recorder.fdatasync)
        await _record_run(journal, recorder)
    written = _written_records(recorder.events)
    scratch = directory / "scratch"
    scratch.mkdir()
    cache: dict[bytes | None, _journal.Loaded | None] = {}
    problems: list[str] = []
    cuts = opened = 0
    sample: dict[bytes, Acks] = {}
    acks = Acks()
    for position, acks, contents in power_cut_states(recorder.events, str(journal)):
        for content in contents:
            cuts += 1
            if content not in cache:
                if content is None:
                    cache[content] = None
                else:
                    state = scratch / "pool.jsonl"
                    state.write_bytes(content)
                    try:
                        cache[content] = _journal.load(state)
                    except harnpool.HarnpoolError as exc:
                        problems.append(f"after event {position}: {exc}")
                        continue
            found = _problems(cache[content], content, acks, written)
            problems += [f"after event {position}: {p}" for p in found]
            if content is not None and (content.endswith(b"\n") or cuts % 97 == 0):
                sample[content] = acks  # the most acknowledged moment that can leave it
    assert not problems, "\n".join(problems[:20])
    # Opening compacts and fsyncs, so only a sample is opened: every sixth state, whole
    # lines or torn, up to the moment each acknowledgement was made.
    for content, acks in list(sample.items())[::6]:
        opened += 1
        problems += await _open_state(scratch, content, acks)
    assert not problems, "\n".join(problems[:20])
    return {
        "recorded_events": len(recorder.events),
        "fsyncs": sum(e[0] == "fsync" for e in recorder.events),
        "states_checked": cuts,
        "distinct_files_loaded": len(cache),
        "opened_with_open_pool": opened,
        "acknowledged": len(acks.submitted),
    }


async def test_every_power_cut_state_loads_to_an_allowed_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report_figures: ReportFigures
) -> None:
    figures = await power_loss(tmp_path, monkeypatch)
    report_figures("power loss", figures)
    assert figures["fsyncs"] > 0
    assert figures["states_checked"] > figures["recorded_events"]
