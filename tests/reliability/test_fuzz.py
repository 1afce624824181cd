"""Fuzzing the loader: mutated journals raise harnpool's errors or load to the model's state.

A fixed-seed generator mutates a journal a real pool wrote (bit flips, byte
changes, truncations, splices of whole lines, random bytes, huge and deeply
nested lines, joined lines) and each result is loaded. The only exceptions
allowed are JournalCorruptError and JournalVersionError, and each must be the
one the line-by-line model in ``_loader_helpers`` predicts, at the same line and
offset; a load that succeeds must give exactly the model's replay of the lines
it kept, and the same torn tail.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from ._loader_helpers import (
    ReportFigures,
    assert_load_matches_model,
    real_journal_bytes,
    split_lines,
    write,
)

SEED = 20240611

Mutation = Callable[[random.Random, bytes], bytes]


def _flip_bits(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _set_byte(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _lines_of(data: bytes) -> list[bytes]:
    return [raw + b"\n" for _, raw in split_lines(data)]


def _splice_lines(rng: random.Random, data: bytes) -> bytes:
    lines = _lines_of(data)
    choice = rng.randrange(4)
    i = rng.randrange(len(lines))
    j = rng.randrange(len(lines))
    if choice == 0:
        lines.insert(j, lines[i])  # a duplicated line, anywhere
    elif choice == 1:
        del lines[i]
    elif choice == 2:
        lines[i], lines[j] = lines[j], lines[i]
    else:
        cut = rng.randrange(len(lines[i]))
        lines[i] = lines[i][:cut] + lines[j][cut:]  # the start of one line, the end of another
    return b"".join(lines)


def _insert_random(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    return data[:i] + junk + data[i:]


def _huge_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines_of(data)
    i = rng.randrange(1, len(lines) + 1)
    size = rng.choice([10_000, 200_000])
    kind = rng.randrange(3)
    if kind == 0:
        line = (
            b'{"kind":"task","id":"'
            + b"x" * size
            + b'","seq":1,"status":"queued","submitted_at":1}'
        )
    elif kind == 1:
        depth = rng.choice([50, 2_000, 20_000])
        line = (
            b'{"kind":"task","id":"deep","seq":1,"status":"completed","submitted_at":1,"result":'
            + b"[" * depth
            + b"]" * depth
            + b"}"
        )
    else:
        line = bytes(rng.randrange(32, 127) for _ in range(size // 100)) * 100
    return b"".join([*lines[:i], line + b"\n", *lines[i:]])


def _join_lines(rng: random.Random, data: bytes) -> bytes:
    newlines = [i for i, c in enumerate(data[:-1]) if c == 0x0A]
    if not newlines:
        return data
    i = rng.choice(newlines)
    return data[:i] + rng.choice([b" ", b"\t", b"\r"]) + data[i + 1 :]


def _blank_lines(rng: random.Random, data: bytes) -> bytes:
    lines = _lines_of(data)
    lines.insert(rng.randrange(len(lines) + 1), rng.choice([b"\n", b"  \n", b"\r\n"]))
    return b"".join(lines)


def _nothing_like_a_journal(rng: random.Random, data: bytes) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))


MUTATIONS: dict[str, Mutation] = {
    "flip bits": _flip_bits,
    "set a byte": _set_byte,
    "truncate": _truncate,
    "splice lines": _splice_lines,
    "insert random bytes": _insert_random,
    "huge line": _huge_line,
    "join lines": _join_lines,
    "blank line": _blank_lines,
    "random bytes": _nothing_like_a_journal,
}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return real_journal_bytes(tmp_path_factory.mktemp("source"), tasks=6)


def _fuzz(source: bytes, directory: Path, count: int, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    names = sorted(MUTATIONS)
    outcomes: Counter[str] = Counter()
    path = directory / "journal.jsonl"
    for n in range(count):
        data = source
        applied = [rng.choice(names) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        for name in applied:
            if data:
                data = MUTATIONS[name](rng, data)
        write(path, data)
        try:
            loaded = assert_load_matches_model(path, data)
        except AssertionError as exc:
            raise AssertionError(f"input {n} ({' + '.join(applied)}): {exc}") from exc
        except Exception as exc:
            raise AssertionError(
                f"input {n} ({' + '.join(applied)}) raised {type(exc).__name__}, "
                f"not a harnpool error: {exc}"
            ) from exc
        outcomes["refused" if loaded is None else "torn" if loaded.torn else "loaded"] += 1
    return outcomes


def test_fuzzed_journals_fail_only_with_harnpool_errors(
    source: bytes, tmp_path: Path, report_figures: ReportFigures
) -> None:
    outcomes = _fuzz(source, tmp_path, 500, SEED)
    assert sum(outcomes.values()) == 500
    # The generator must reach every outcome, or it tests less than it claims.
    assert all(outcomes[k] > 0 for k in ("refused", "torn", "loaded")), outcomes
    report_figures("loader fuzz", {"inputs": 500, **outcomes})


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fuzzed_journals_at_length(
    source: bytes, tmp_path: Path, report_figures: ReportFigures
) -> None:
    count = 10_000
    outcomes = _fuzz(source, tmp_path, count, SEED + 1)
    assert sum(outcomes.values()) == count
    print(f"loader fuzz: {count} inputs, {dict(outcomes)}")
    report_figures("loader fuzz (stress)", {"inputs": count, **outcomes})
