"""Damage before the tail is refused, precisely, and the files are left alone.

Each kind of damage is applied to every line of a journal a real pool wrote,
except the last (damage there is a torn tail). Loading must raise
JournalCorruptError naming the journal, the damaged line and the byte offset at
which it starts, and must change nothing: not the journal, not its directory
(opening a pool adds only its ``.lock`` file, and no ``.compact`` is left).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import harnpool
from harnpool._journal import load

from ._loader_helpers import (
    assert_load_matches_model,
    directory_snapshot,
    real_journal_bytes,
    split_lines,
    write,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return real_journal_bytes(tmp_path_factory.mktemp("source"), tasks=6)


def _flip(raw: bytes, index: int, bit: int) -> bytes:
    return raw[:index] + bytes([raw[index] ^ bit]) + raw[index + 1 :]


def _replace(raw: bytes, old: bytes, new: bytes) -> bytes | None:
    return raw.replace(old, new, 1) if old in raw else None


def _on_line(damage: Callable[[bytes], bytes | None]) -> Callable[[list[bytes], int], None]:
    def apply(lines: list[bytes], i: int) -> None:
        changed = damage(lines[i - 1])
        if changed is None:
            raise _NotApplicable
        lines[i - 1] = changed

    return apply


class _NotApplicable(Exception):
    pass


def _duplicate_header(lines: list[bytes], i: int) -> None:
    if i == 1:
        raise _NotApplicable
    lines[i - 1] = lines[0]


def _insert_header(lines: list[bytes], i: int) -> None:
    if i == 1:
        raise _NotApplicable
    lines.insert(i - 1, lines[0])


def _swap_with_next(lines: list[bytes], i: int) -> None:
    # Moves the header down when i == 1; elsewhere two task records swap
    # harmlessly, so only the header case applies.
    if i != 1:
        raise _NotApplicable
    lines[0], lines[1] = lines[1], lines[0]


DAMAGE: dict[str, Callable[[list[bytes], int], None]] = {
    "flipped first quote": _on_line(lambda raw: _flip(raw, raw.index(b'"'), 0x01)),
    "flipped middle quote": _on_line(
        lambda raw: _flip(raw, [i for i, c in enumerate(raw) if c == 0x22][7], 0x01)
    ),
    "flipped last quote": _on_line(lambda raw: _flip(raw, raw.rindex(b'"'), 0x01)),
    "flipped opening brace": _on_line(lambda raw: _flip(raw, 0, 0x40)),
    "flipped closing brace": _on_line(lambda raw: _flip(raw, len(raw) - 1, 0x04)),
    "cut short": _on_line(lambda raw: raw[: len(raw) // 2]),
    "invalid utf-8 in the tag": _on_line(lambda raw: _replace(raw, b'"kind":"', b'"kind":"\xff')),
    "invalid utf-8 in a string": _on_line(
        lambda raw: (
            _replace(raw, b'"pool_id":"', b'"pool_id":"\xc3(')
            or _replace(raw, b'"id":"', b'"id":"\xe2\x98')
        )
    ),
    "json array": _on_line(lambda raw: b"[1,2,3]"),
    "json null": _on_line(lambda raw: b"null"),
    "empty object": _on_line(lambda raw: b"{}"),
    "task of the wrong shape": _on_line(lambda raw: b'{"kind":"task","id":1,"seq":"one"}'),
    "status nobody knows": _on_line(lambda raw: _replace(raw, b'"status":"', b'"status":"x')),
    "unknown record kind": _on_line(
        lambda raw: (
            _replace(raw, b'"kind":"task"', b'"kind":"snapshot"')
            or _replace(raw, b'"kind":"header"', b'"kind":"snapshot"')
        )
    ),
    "duplicated header": _duplicate_header,
    "inserted header": _insert_header,
    "header not first": _swap_with_next,
}


def _expect_refused(path: Path, line: int, offset: int) -> harnpool.JournalCorruptError:
    with pytest.raises(harnpool.JournalCorruptError) as info:
        load(path)
    error = info.value
    assert isinstance(error, ValueError)
    assert (error.path, error.line, error.offset) == (str(path), line, offset)
    assert str(path) in str(error)
    assert f"line {line}" in str(error)
    assert f"offset {offset}" in str(error)
    return error


async def _expect_pool_refused(path: Path, line: int, offset: int) -> None:
    before = directory_snapshot(path.parent)
    with pytest.raises(harnpool.JournalCorruptError) as info:
        async with harnpool.open_pool(path):
            pytest.fail("a corrupt journal was opened")
    assert (info.value.line, info.value.offset) == (line, offset)
    after = directory_snapshot(path.parent)
    lock = path.name + ".lock"
    assert set(after) <= set(before) | {lock}, "opening left a stray file"
    assert {n: b for n, b in after.items() if n != lock} == before, "opening changed a file"


@pytest.mark.parametrize("kind", sorted(DAMAGE))
async def test_damage_before_the_tail_is_refused_and_nothing_changes(
    kind: str, source: bytes, tmp_path: Path
) -> None:
    damage = DAMAGE[kind]
    original = [raw for _, raw in split_lines(source)]
    applied = 0
    for i in range(1, len(original)):  # every line but the last
        lines = list(original)
        try:
            damage(lines, i)
        except _NotApplicable:
            continue
        data = b"".join(raw + b"\n" for raw in lines)
        # The damaged line starts after the i - 1 lines before it, whatever they hold.
        offset = sum(len(raw) + 1 for raw in lines[: i - 1])
        directory = tmp_path / f"line{i}"
        directory.mkdir()
        path = write(directory / "journal.jsonl", data)
        _expect_refused(path, i, offset)
        assert_load_matches_model(path, data)
        await _expect_pool_refused(path, i, offset)
        assert path.read_bytes() == data
        applied += 1
    assert applied > 0, f"{kind} applied to no line"


async def test_damage_before_a_torn_tail_is_still_refused(source: bytes, tmp_path: Path) -> None:
    lines = [raw for _, raw in split_lines(source)]
    lines[-2] = lines[-2][:-1]  # the record before the last loses its closing brace
    offset = sum(len(raw) + 1 for raw in lines[:-2])
    data = b"".join(raw + b"\n" for raw in lines)[:-5]  # and the last is torn
    path = write(tmp_path / "journal.jsonl", data)
    _expect_refused(path, len(lines) - 1, offset)
    await _expect_pool_refused(path, len(lines) - 1, offset)


@pytest.mark.parametrize(
    "data",
    [b"", b"\n", b"\n\n  \n", b"\xff\xfe", b"[]\n", b'{"kind":"header"'],
    ids=["empty", "a newline", "blank lines", "binary", "no header", "a torn header alone"],
)
async def test_a_file_without_a_header_is_refused(data: bytes, tmp_path: Path) -> None:
    path = write(tmp_path / "journal.jsonl", data)
    error = _expect_refused(path, 1, 0)
    assert error.reason
    await _expect_pool_refused(path, 1, 0)
    assert path.read_bytes() == data


async def test_task_records_without_a_header_are_refused(source: bytes, tmp_path: Path) -> None:
    data = source[source.index(b"\n") + 1 :]
    path = write(tmp_path / "journal.jsonl", data)
    _expect_refused(path, 1, 0)
    await _expect_pool_refused(path, 1, 0)


@pytest.mark.parametrize("separator", [b" ", b"\t", b"\r"])
def test_a_line_holding_two_records_is_refused(
    separator: bytes, source: bytes, tmp_path: Path
) -> None:
    # One record per line is the format; the line-by-line reader refuses this
    # file as soon as anything else is wrong with it, so a whole file must be too.
    lines = [raw for _, raw in split_lines(source)]
    offset = sum(len(raw) + 1 for raw in lines[:2])
    lines[2:4] = [lines[2] + separator + lines[3]]
    data = b"".join(raw + b"\n" for raw in lines)
    path = write(tmp_path / "journal.jsonl", data)
    _expect_refused(path, 3, offset)


def test_a_record_spread_over_lines_is_refused(source: bytes, tmp_path: Path) -> None:
    lines = [raw for _, raw in split_lines(source)]
    offset = len(lines[0]) + 1
    lines[1] = lines[1].replace(b",", b",\n", 1)
    data = b"".join(raw + b"\n" for raw in lines)
    path = write(tmp_path / "journal.jsonl", data)
    _expect_refused(path, 2, offset)


def test_a_newer_format_is_refused_untouched(source: bytes, tmp_path: Path) -> None:
    data = source.replace(b'"format":1,', b'"format":99,', 1)
    path = write(tmp_path / "journal.jsonl", data)
    with pytest.raises(harnpool.JournalVersionError) as info:
        load(path)
    assert (info.value.found, info.value.supported) == (99, 1)
    assert path.read_bytes() == data
