"""Compaction killed at every step: the journal is the old file or the new one, never a mix.

Opening a pool compacts its journal: the header and one record per task go to
``<journal>.compact``, which is fsynced, renamed over the journal, and the
directory fsynced. A child (``_crash_compact.py``) opens a pool on a known
journal and SIGKILLs itself before each of the journal module's ``open``,
``write``, ``fsync``, ``close`` and ``replace`` calls in turn, and halfway through
each write. After every kill the journal must hold exactly the old bytes (killed
before the rename) or exactly what an uninterrupted open writes (after it), and
a stray ``.compact`` file, here planted beforehand as a valid journal holding a
decoy task, must never be read: the next open ignores it and replaces it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import msgspec

import harnpool
from harnpool._records import FORMAT_VERSION, Header, Status, TaskRecord
from tests.reliability.conftest import ReportFigures

CHILD = Path(__file__).with_name("_crash_compact.py")
TIMEOUT = 60.0

_header = Header(
    format=FORMAT_VERSION, pool_id="0" * 32, created_at=1.0, max_concurrent=2, submit_counter=0
)


def _journal(records: list[TaskRecord], *, torn: bytes = b"") -> bytes:
    encoder = msgspec.json.Encoder()
    return b"".join(encoder.encode(r) + b"\n" for r in [_header, *records]) + torn


def _old_journal() -> bytes:
    """A journal as a crash leaves it: several records per task, one running, a torn tail."""
    queued = [
        TaskRecord(id=f"t{n}", seq=n, status=Status.QUEUED, submitted_at=2.0, key=key)
        for n, key in enumerate(["waiting", "interrupted", "done", "broken"], 1)
    ]
    return _journal(
        [
            *queued,
            msgspec.structs.replace(queued[1], status=Status.RUNNING, started_at=3.0, attempts=1),
            msgspec.structs.replace(queued[2], status=Status.RUNNING, started_at=3.0, attempts=1),
            msgspec.structs.replace(
                queued[2],
                status=Status.COMPLETED,
                started_at=3.0,
                finished_at=4.0,
                attempts=1,
                result=msgspec.Raw(b'{"answer":42}'),
            ),
            msgspec.structs.replace(
                queued[3],
                status=Status.FAILED,
                attempts=1,
                error_type="builtins.ValueError",
                error_message="no",
            ),
        ],
        torn=b'{"kind":"task","id":"t5","se',
    )


#: A valid journal left at ``<journal>.compact``: trusting it would show the decoy task.
_DECOY = _journal(
    [TaskRecord(id="t1", seq=1, status=Status.COMPLETED, submitted_at=1.0, key="decoy")]
)
_EXPECTED = {
    "t1": ("waiting", Status.QUEUED),
    "t2": ("interrupted", Status.QUEUED),
    "t3": ("done", Status.COMPLETED),
    "t4": ("broken", Status.FAILED),
}


def _start(directory: Path, step: int, mode: str) -> subprocess.Popen[bytes]:
    directory.mkdir()
    (directory / "pool.jsonl").write_bytes(_old_journal())
    (directory / "pool.jsonl.compact").write_bytes(_DECOY)
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(directory / "pool.jsonl"), str(step), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def _reopen(journal: Path) -> None:
    """Open the pool the killed child left: the decoy is ignored, the tasks are all there."""
    async with harnpool.open_pool(journal, max_concurrent=2) as pool:
        found = {t.id: (t.key, t.status) for t in pool.tasks()}
        assert found == _EXPECTED
        assert await pool.wait("t3") == {"answer": 42}
        assert not journal.with_name("pool.jsonl.compact").exists()


def test_compaction_killed_at_every_step_leaves_old_or_new(
    tmp_path: Path, report_figures: ReportFigures
) -> None:
    old = _old_journal()
    dry = _start(tmp_path / "dry", 0, "before")
    out, err = dry.communicate(timeout=TIMEOUT)
    assert dry.returncode == 0, err.decode()
    steps = [tuple(step) for step in json.loads(out.splitlines()[-1])]
    new = (tmp_path / "dry" / "pool.jsonl").read_bytes()
    assert new != old
    rename = ("replace", "pool.jsonl.compact pool.jsonl")
    renamed = steps.index(rename) + 1 if rename in steps else len(steps) + 1

    cases = [(n, "before") for n in range(1, len(steps) + 1)]
    cases += [(n, "partial") for n, (name, _) in enumerate(steps, 1) if name == "write"]
    children = {case: _start(tmp_path / f"{case[1]}-{case[0]}", *case) for case in cases}
    outcomes = {"old": 0, "new": 0, "stray_compact": 0}
    for (n, mode), child in children.items():
        _, err = child.communicate(timeout=TIMEOUT)
        where = f"killed {mode} step {n} {steps[n - 1]}"
        assert child.returncode == -signal.SIGKILL, f"{where}: {err.decode()}"
        journal = tmp_path / f"{mode}-{n}" / "pool.jsonl"
        found = journal.read_bytes()
        assert found in (old, new), f"{where}: the journal is neither the old nor the new file"
        # The rename is the moment: before it the old file, after it the new one.
        assert found == (old if n <= renamed else new), f"{where}: {found[:300]!r}"
        outcomes["old" if found == old else "new"] += 1
        outcomes["stray_compact"] += journal.with_name("pool.jsonl.compact").exists()
        anyio.run(_reopen, journal)
    report_figures("compaction crash", {"steps": len(steps), "kills": len(children), **outcomes})
    assert outcomes["old"]
    assert outcomes["new"]
    assert outcomes["stray_compact"]


async def test_stray_compact_file_is_never_trusted(journal_path: Path) -> None:
    journal_path.write_bytes(_old_journal())
    stray = journal_path.with_name(journal_path.name + ".compact")
    stray.write_bytes(_DECOY)
    async with harnpool.open_pool(journal_path, max_concurrent=2) as pool:
        assert {t.id: (t.key, t.status) for t in pool.tasks()} == _EXPECTED
    assert not stray.exists()
