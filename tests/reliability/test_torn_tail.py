"""A torn tail, cut at every byte: it is skipped, reported, and never written after.

The journal under test is written by a real pool. A crash mid-write leaves a
prefix of the last record (no newline); a crash before the tail was fsynced can
leave a prefix of any of the last several records. Every such cut must load to
the records before it, report the torn line and its offset, emit a
``journal.torn_tail`` warning, and leave the next append on a clean line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import structlog

import harnpool
from harnpool._journal import load

from ._loader_helpers import (
    ReportFigures,
    all_lines_decode,
    assert_load_matches_model,
    model_load,
    real_journal_bytes,
    split_lines,
    truncations,
    write,
)

#: How many of the last records a missing fsync can leave torn.
UNSYNCED_LINES = 5


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return real_journal_bytes(tmp_path_factory.mktemp("source"))


def _last_line_cuts(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Every prefix of the last line, without and with a newline after it."""
    start = split_lines(data)[-1][0]
    for cut in range(start + 1, len(data) - 1):
        yield cut, data[:cut]
        yield cut, data[:cut] + b"\n"
    # The whole record without its newline: the write stopped one byte short.
    yield len(data) - 1, data[: len(data) - 1]


async def _reopen_and_append(path: Path) -> tuple[harnpool.RecoveryReport, list[dict[str, object]]]:
    async def work() -> str:
        return "after the tear"

    with structlog.testing.capture_logs() as events:
        async with harnpool.open_pool(path) as pool:
            report = pool.recovery
            task_id = await pool.submit(work, key="appended")
            with anyio.fail_after(10):
                assert await pool.wait(task_id) == "after the tear"
    return report, [dict(e) for e in events]


class TestLastRecord:
    def test_every_cut_loads_the_records_before_it(self, source: bytes, tmp_path: Path) -> None:
        lines = split_lines(source)
        start = lines[-1][0]
        before = model_load(source[:start])
        assert before.outcome == "ok"
        checked = 0
        for cut, data in _last_line_cuts(source):
            path = write(tmp_path / "journal.jsonl", data)
            loaded = assert_load_matches_model(path, data)
            assert loaded is not None, cut
            assert loaded.torn is not None, cut
            assert (loaded.torn.line, loaded.torn.offset) == (len(lines), start), cut
            assert loaded.torn.length == len(data) - start, cut
            assert loaded.tasks.keys() == before.tasks.keys(), cut
            checked += 1
        assert checked == 2 * (len(source) - start - 2) + 1

    def test_a_whole_last_record_is_not_torn(self, source: bytes, tmp_path: Path) -> None:
        path = write(tmp_path / "journal.jsonl", source)
        loaded = load(path)
        assert loaded is not None
        assert loaded.torn is None
        assert len(loaded.tasks) == len(model_load(source).tasks)

    async def test_every_cut_reopens_reports_and_appends_on_a_clean_line(
        self, source: bytes, tmp_path: Path, report_figures: ReportFigures
    ) -> None:
        lines = split_lines(source)
        start = lines[-1][0]
        before = model_load(source[:start])
        reopened = 0
        for cut, data in _last_line_cuts(source):
            directory = tmp_path / f"cut{reopened}"
            directory.mkdir()
            path = write(directory / "journal.jsonl", data)
            report, events = await _reopen_and_append(path)

            assert report.torn_tail is not None, cut
            assert (report.torn_tail.line, report.torn_tail.offset) == (len(lines), start)
            assert report.tasks == len(before.tasks)
            torn_events = [e for e in events if e["event"] == "journal.torn_tail"]
            assert len(torn_events) == 1, events
            assert torn_events[0]["log_level"] == "warning"
            assert torn_events[0]["line"] == len(lines)
            assert torn_events[0]["offset"] == start
            assert torn_events[0]["pool"] == str(path)

            after = path.read_bytes()
            assert all_lines_decode(after), cut
            reloaded = load(path)
            assert reloaded is not None
            assert reloaded.torn is None
            assert reloaded.tasks.keys() == before.tasks.keys() | {
                t.id for t in reloaded.tasks.values() if t.key == "appended"
            }
            assert len(reloaded.tasks) == len(before.tasks) + 1
            reopened += 1
        report_figures("torn last record", {"cuts_reopened": reopened})


class TestUnsyncedTail:
    def test_a_cut_anywhere_in_the_last_lines_loads_every_whole_record(
        self, source: bytes, tmp_path: Path, report_figures: ReportFigures
    ) -> None:
        checked = 0
        for cut in truncations(source, UNSYNCED_LINES):
            data = source[:cut]
            path = write(tmp_path / "journal.jsonl", data)
            loaded = assert_load_matches_model(path, data)
            assert loaded is not None, cut
            whole = data.rfind(b"\n") + 1
            assert loaded.tasks.keys() == model_load(data[:whole]).tasks.keys()
            if whole == len(data):
                assert loaded.torn is None, cut
            else:
                assert loaded.torn is not None, cut
                assert loaded.torn.offset == whole
                assert loaded.torn.line == data.count(b"\n") + 1
            checked += 1
        report_figures("unsynced tail", {"cuts_loaded": checked, "last_lines": UNSYNCED_LINES})

    async def test_a_cut_anywhere_in_the_last_lines_reopens_cleanly(
        self, source: bytes, tmp_path: Path
    ) -> None:
        # Every third offset keeps the run short; the cheaper load test above covers each one.
        for n, cut in enumerate(list(truncations(source, UNSYNCED_LINES))[::3]):
            directory = tmp_path / f"cut{n}"
            directory.mkdir()
            data = source[:cut]
            path = write(directory / "journal.jsonl", data)
            whole = data.rfind(b"\n") + 1
            expected = model_load(data[:whole])
            report, events = await _reopen_and_append(path)
            torn = [e for e in events if e["event"] == "journal.torn_tail"]
            if whole == len(data):
                assert report.torn_tail is None
                assert torn == []
            else:
                assert report.torn_tail is not None
                assert report.torn_tail.offset == whole
                assert [e["offset"] for e in torn] == [whole]
            assert report.tasks == len(expected.tasks)
            assert all_lines_decode(path.read_bytes()), cut
            reloaded = load(path)
            assert reloaded is not None
            assert reloaded.torn is None
            for task_id, record in expected.tasks.items():
                kept = reloaded.tasks[task_id]
                assert (kept.seq, kept.key, kept.priority) == (
                    record.seq,
                    record.key,
                    record.priority,
                )
                if record.status is harnpool.Status.RUNNING:
                    assert kept.status is harnpool.Status.QUEUED
                else:
                    assert kept.status is record.status


def test_line_count_counts_an_undecodable_last_line_once(source: bytes, tmp_path: Path) -> None:
    # The last line is whole (it has its newline) but cannot be decoded: it is the
    # torn tail, and the file still has exactly as many lines as newlines.
    start = split_lines(source)[-1][0]
    data = source[: start + 10] + b"\n"
    loaded = load(write(tmp_path / "journal.jsonl", data))
    assert loaded is not None
    assert loaded.torn is not None
    assert loaded.lines == data.count(b"\n")
