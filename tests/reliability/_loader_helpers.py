"""Helpers for the file-level reliability tests: real journals, and a model of the loader.

The model is the journal format as documented, read line by line and nothing
more: one record per ``\\n``-terminated line, the first a header and no other
header, the last record of a task id wins, an incomplete last line (no newline,
or an undecodable last line after at least one record) is a torn tail, and any
other line that cannot be decoded makes the whole file corrupt. Each line is
decoded on its own with a fresh decoder, so the model shares no code path with
``harnpool._journal``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec

import harnpool
from harnpool._journal import Loaded, load
from harnpool._records import FORMAT_VERSION, Header, Record, TaskRecord

ReportFigures = Callable[[str, Mapping[str, object]], None]


def split_lines(data: bytes) -> list[tuple[int, bytes]]:
    """Return ``(byte offset, line without its newline)`` for every line of ``data``.

    A final fragment without a newline counts as a line.
    """
    lines: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        if end < 0:
            end = len(data)
        lines.append((offset, data[offset:end]))
        offset = end + 1
    return lines


def decode_line(raw: bytes) -> Record | None:
    """Decode one line as a record with a fresh decoder, or None if it cannot be trusted."""
    try:
        record: Record = msgspec.json.decode(raw, type=Record)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return record


@dataclass
class Expected:
    """What the model says loading some bytes must give."""

    #: "ok", "corrupt" or "version".
    outcome: str
    header: Header | None = None
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    #: For "ok": ``(line, offset)`` of the torn tail, if any. For "corrupt": the bad line.
    torn: tuple[int, int] | None = None
    line: int = 0
    offset: int = 0
    lines: int = 0


def model_load(data: bytes) -> Expected:
    """The loader's documented behaviour on ``data``, worked out line by line."""
    lines = split_lines(data)
    complete = lines if data.endswith(b"\n") or not data else lines[:-1]
    torn: tuple[int, int] | None = None
    if len(complete) < len(lines):
        torn = (len(lines), lines[-1][0])
    records: list[Record] = []
    for number, (offset, raw) in enumerate(complete, start=1):
        if not raw.strip():
            continue
        record = decode_line(raw)
        if record is None:
            if number == len(complete) and torn is None and records:
                torn = (number, offset)
                break
            return Expected("corrupt", line=number, offset=offset)
        if not records and not isinstance(record, Header):
            return Expected("corrupt", line=number, offset=offset)
        if records and isinstance(record, Header):
            return Expected("corrupt", line=number, offset=offset)
        records.append(record)
    if not records:
        return Expected("corrupt", line=1, offset=0)
    header = records[0]
    assert isinstance(header, Header)
    if header.format > FORMAT_VERSION:
        return Expected("version")
    tasks: dict[str, TaskRecord] = {}
    for record in records[1:]:
        assert isinstance(record, TaskRecord)
        tasks[record.id] = record
    return Expected("ok", header=header, tasks=tasks, torn=torn, lines=len(lines))


def comparable(record: TaskRecord) -> dict[str, Any]:
    """A task record as builtins, its raw result included, for equality checks."""
    fields: dict[str, Any] = msgspec.structs.asdict(record)
    result = fields.pop("result")
    fields["result"] = None if isinstance(result, msgspec.UnsetType) else bytes(result)
    return fields


def assert_load_matches_model(path: Path, data: bytes) -> Loaded | None:
    """Load ``path`` (holding ``data``) and check the result against :func:`model_load`.

    Returns what the loader returned, or None if it refused the file (rightly).
    """
    expected = model_load(data)
    try:
        loaded = load(path)
    except harnpool.JournalCorruptError as exc:
        refused: harnpool.JournalCorruptError | None = exc
    except harnpool.JournalVersionError:
        assert expected.outcome == "version"
        return None
    else:
        refused = None
    if refused is not None:
        assert expected.outcome == "corrupt", f"refused a journal the model loads: {refused}"
        assert (refused.line, refused.offset) == (expected.line, expected.offset), str(refused)
        assert refused.path == os.fspath(path)
        return None
    assert loaded is not None
    assert expected.outcome == "ok", (
        f"loaded a journal the model calls {expected.outcome} "
        f"(line {expected.line}, offset {expected.offset})"
    )
    assert loaded.header == expected.header
    assert {i: comparable(r) for i, r in loaded.tasks.items()} == {
        i: comparable(r) for i, r in expected.tasks.items()
    }
    seqs = [r.seq for r in loaded.tasks.values()]
    assert seqs == sorted(seqs), "tasks are not in submission order"
    actual_torn = None if loaded.torn is None else (loaded.torn.line, loaded.torn.offset)
    assert actual_torn == expected.torn
    # ``loaded.lines`` is checked on its own, in test_torn_tail.
    return loaded


def directory_snapshot(directory: Path) -> dict[str, bytes]:
    """Every file in ``directory`` and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# -- journals made by a real pool ------------------------------------------------------


async def _value(value: object) -> object:
    return value


async def _raise(message: str) -> object:
    raise ValueError(message)


def _result_for(n: int) -> object:
    choices: list[object] = [
        n,
        f"result {n} \N{SNOWMAN}",
        [n, n + 1, {"nested": n}],
        {"n": n, "half": n / 2, "none": None, "flag": n % 2 == 0},
        None,
    ]
    return choices[n % len(choices)]


async def fill_journal(path: Path, *, tasks: int = 8, keep_open: bool = False) -> None:
    """Run a real pool on ``path``: mixed priorities and keys, results of several shapes,
    a failure every fourth task, every task waited for.

    With ``keep_open`` the last task's ``running`` record is left in the journal
    (the block is left by an exception while it runs), as a crash would leave it.
    """
    blocker = anyio.Event()
    started = anyio.Event()

    async def blocked() -> None:
        started.set()
        await blocker.wait()

    async with harnpool.open_pool(path, max_concurrent=2) as pool:
        for n in range(tasks):
            key = f"k{n}" if n % 3 else None
            if n % 4 == 3:
                task_id = await pool.submit(_raise, f"boom {n}", key=key, priority=n % 3)
                with contextlib.suppress(harnpool.TaskFailed):
                    await pool.wait(task_id)
            else:
                task_id = await pool.submit(_value, _result_for(n), key=key, priority=n % 3)
                await pool.wait(task_id)
    if keep_open:
        try:
            async with harnpool.open_pool(path, max_concurrent=1) as pool:
                task_id = await pool.submit(blocked, key="stuck")
                with anyio.fail_after(10):
                    await started.wait()
                raise _LeaveBlock
        except _LeaveBlock:
            pass


class _LeaveBlock(Exception):
    pass


def real_journal_bytes(directory: Path, *, tasks: int = 8) -> bytes:
    """The bytes of a journal a real pool wrote (see :func:`fill_journal`)."""
    path = directory / "source.jsonl"
    anyio.run(functools.partial(fill_journal, path, tasks=tasks))
    data = path.read_bytes()
    assert data.endswith(b"\n")
    assert all(decode_line(raw) is not None for _, raw in split_lines(data))
    return data


def all_lines_decode(data: bytes) -> bool:
    """True if ``data`` ends with a newline and each of its lines is a record."""
    return data.endswith(b"\n") and all(
        decode_line(raw) is not None for _, raw in split_lines(data)
    )


def write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` and return it."""
    path.write_bytes(data)
    return path


def truncations(data: bytes, last_lines: int) -> Iterable[int]:
    """Every length that cuts ``data`` inside its last ``last_lines`` lines."""
    lines = split_lines(data)
    start = lines[-last_lines][0]
    return range(start + 1, len(data))
