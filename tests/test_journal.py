"""The journal: creation, replay, torn tails, corruption, compaction, lock, group commit."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest

from harnpool import (
    JournalCorruptError,
    JournalLockedError,
    JournalVersionError,
    JournalWriteError,
    PoolClosedError,
    Status,
    _journal,
)
from harnpool._journal import Journal, load, open_journal
from harnpool._records import Header, TaskRecord

encoder = msgspec.json.Encoder()


def header(**changes: object) -> Header:
    fields: dict[str, object] = {
        "format": 1,
        "pool_id": "p",
        "created_at": 1.0,
        "max_concurrent": 2,
        "submit_counter": 0,
    }
    fields.update(changes)
    return Header(**fields)  # type: ignore[arg-type]


def task(seq: int, status: Status = Status.QUEUED, **changes: object) -> TaskRecord:
    fields: dict[str, object] = {
        "id": f"t{seq}",
        "seq": seq,
        "status": status,
        "submitted_at": float(seq),
    }
    fields.update(changes)
    return TaskRecord(**fields)  # type: ignore[arg-type]


def write_lines(path: Path, *records: Header | TaskRecord) -> bytes:
    data = b"".join(encoder.encode(r) + b"\n" for r in records)
    path.write_bytes(data)
    return data


@pytest.fixture
def opened_journals() -> Iterator[list[_journal.Opened]]:
    """Collects journals opened by a test and closes them afterwards."""
    opened: list[_journal.Opened] = []
    yield opened
    for o in opened:
        os.close(o.fd)
        os.close(o.lock_fd)


def open_sync(path: Path, registry: list[_journal.Opened]) -> _journal.Opened:
    o = open_journal(path, max_concurrent=2)
    registry.append(o)
    return o


class TestCreate:
    def test_new_journal_has_only_a_header(
        self, journal_path: Path, opened_journals: list[_journal.Opened]
    ) -> None:
        o = open_sync(journal_path, opened_journals)
        assert o.created
        lines = journal_path.read_bytes().splitlines()
        assert len(lines) == 1
        record = msgspec.json.decode(lines[0], type=Header)
        assert record.format == 1
        assert record.max_concurrent == 2

    def test_creating_fsyncs_the_directory(
        self,
        journal_path: Path,
        opened_journals: list[_journal.Opened],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        synced: list[bool] = []
        real_fsync = os.fsync

        def spy(fd: int) -> None:
            synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", spy)
        open_sync(journal_path, opened_journals)
        # the file, then its directory after the rename
        assert synced == [False, True]

    def test_missing_file_loads_as_none(self, journal_path: Path) -> None:
        assert load(journal_path) is None


class TestReplay:
    def test_last_record_per_task_wins(self, journal_path: Path) -> None:
        write_lines(
            journal_path,
            header(),
            task(1),
            task(2),
            task(1, Status.RUNNING, attempts=1),
            task(1, Status.COMPLETED, attempts=1, result=msgspec.Raw(b"[1,2]")),
        )
        loaded = load(journal_path)
        assert loaded is not None
        assert [r.id for r in loaded.tasks.values()] == ["t1", "t2"]
        done = loaded.tasks["t1"]
        assert done.status is Status.COMPLETED
        assert not isinstance(done.result, msgspec.UnsetType)
        assert bytes(done.result) == b"[1,2]"
        assert loaded.torn is None

    def test_newer_format_is_refused(self, journal_path: Path) -> None:
        write_lines(journal_path, header(format=99), task(1))
        with pytest.raises(JournalVersionError) as info:
            load(journal_path)
        assert info.value.found == 99
        assert str(journal_path) in str(info.value)


class TestTornTail:
    def test_every_cut_inside_the_last_record_is_skipped_and_reported(
        self, journal_path: Path
    ) -> None:
        data = write_lines(journal_path, header(), task(1), task(2, key="k"), task(3, priority=4))
        last_start = data.rstrip(b"\n").rfind(b"\n") + 1
        for cut in range(last_start + 1, len(data)):  # every cut that leaves part of line 4
            journal_path.write_bytes(data[:cut])
            loaded = load(journal_path)
            assert loaded is not None, cut
            assert list(loaded.tasks) == ["t1", "t2"], cut
            assert loaded.torn is not None, cut
            assert (loaded.torn.line, loaded.torn.offset) == (4, last_start), cut
            assert loaded.torn.length == cut - last_start, cut

    def test_an_undecodable_last_line_with_its_newline_is_torn(self, journal_path: Path) -> None:
        data = write_lines(journal_path, header(), task(1))
        journal_path.write_bytes(data + b'{"kind":"task","id":\n')
        loaded = load(journal_path)
        assert loaded is not None
        assert list(loaded.tasks) == ["t1"]
        assert loaded.torn is not None
        assert loaded.torn.line == 3
        assert loaded.torn.offset == len(data)

    def test_compaction_cuts_the_torn_tail_before_the_next_append(
        self, journal_path: Path, opened_journals: list[_journal.Opened]
    ) -> None:
        data = write_lines(journal_path, header(), task(1), task(2))
        journal_path.write_bytes(data[:-5])
        o = open_sync(journal_path, opened_journals)
        assert o.torn is not None
        os.write(o.fd, encoder.encode(task(3)) + b"\n")
        loaded = load(journal_path)
        assert loaded is not None
        assert list(loaded.tasks) == ["t1", "t3"]
        assert loaded.torn is None


class TestCorruption:
    @pytest.mark.parametrize(
        ("bad", "reason"),
        [
            (b'{"kind":"task","id":"t2","se', "truncated"),
            (b'{"kind":"task","id":"t2"}', "missing fields"),
            (b'{"kind":"mystery","id":"t2"}', "unknown kind"),
            (b"\xff\xfe not utf-8", "invalid utf-8"),
            (
                b'{"kind":"task","id":"t\xff","seq":2,"status":"queued","submitted_at":1}',
                "in a string",
            ),
            (b"[1, 2, 3]", "wrong shape"),
        ],
    )
    def test_a_bad_middle_line_is_refused_and_the_file_left_alone(
        self, journal_path: Path, bad: bytes, reason: str
    ) -> None:
        head = encoder.encode(header()) + b"\n" + encoder.encode(task(1)) + b"\n"
        data = head + bad + b"\n" + encoder.encode(task(3)) + b"\n"
        journal_path.write_bytes(data)
        with pytest.raises(JournalCorruptError) as info:
            open_journal(journal_path, max_concurrent=1)
        assert (info.value.line, info.value.offset) == (3, len(head)), reason
        assert str(journal_path) in str(info.value)
        assert "line 3" in str(info.value)
        assert journal_path.read_bytes() == data
        assert sorted(os.listdir(journal_path.parent)) == ["pool.jsonl", "pool.jsonl.lock"]

    def test_a_file_without_a_header_is_refused(self, journal_path: Path) -> None:
        data = write_lines(journal_path, task(1), task(2))
        with pytest.raises(JournalCorruptError) as info:
            open_journal(journal_path, max_concurrent=1)
        assert (info.value.line, info.value.offset) == (1, 0)
        assert "not a header" in info.value.reason
        assert journal_path.read_bytes() == data

    @pytest.mark.parametrize("content", [b"", b'{"kind":"header","for'])
    def test_a_file_with_no_complete_line_is_refused(
        self, journal_path: Path, content: bytes
    ) -> None:
        journal_path.write_bytes(content)
        with pytest.raises(JournalCorruptError, match="no header"):
            open_journal(journal_path, max_concurrent=1)
        assert journal_path.read_bytes() == content

    def test_a_second_header_is_refused(self, journal_path: Path) -> None:
        data = write_lines(journal_path, header(), task(1), header(), task(2))
        with pytest.raises(JournalCorruptError, match="second header") as info:
            load(journal_path)
        assert info.value.line == 3
        assert journal_path.read_bytes() == data


class TestCompaction:
    def test_one_record_per_task_and_running_goes_back_to_queued(
        self, journal_path: Path, opened_journals: list[_journal.Opened]
    ) -> None:
        write_lines(
            journal_path,
            header(submit_counter=0),
            task(1),
            task(2, priority=3),
            task(1, Status.RUNNING, started_at=5.0, attempts=1),
            task(2, Status.RUNNING, started_at=6.0, attempts=1, priority=3),
            task(2, Status.FAILED, attempts=1, priority=3, error_type="E", error_message="m"),
        )
        o = open_sync(journal_path, opened_journals)
        assert o.interrupted == ["t1"]
        lines = journal_path.read_bytes().splitlines()
        assert len(lines) == 3
        h = msgspec.json.decode(lines[0], type=Header)
        assert h.submit_counter == 2
        t1 = msgspec.json.decode(lines[1], type=TaskRecord)
        assert (t1.status, t1.seq, t1.attempts, t1.started_at) == (Status.QUEUED, 1, 1, None)
        t2 = msgspec.json.decode(lines[2], type=TaskRecord)
        assert (t2.status, t2.error_type) == (Status.FAILED, "E")

    def test_a_stray_temporary_file_is_not_trusted(
        self, journal_path: Path, opened_journals: list[_journal.Opened]
    ) -> None:
        write_lines(journal_path, header(), task(1))
        stray = Path(str(journal_path) + ".compact")
        stray.write_bytes(b"half a compaction that never got renamed")
        o = open_sync(journal_path, opened_journals)
        assert [r.id for r in o.tasks] == ["t1"]
        assert not stray.exists()

    def test_the_submit_counter_never_goes_backwards(
        self, journal_path: Path, opened_journals: list[_journal.Opened]
    ) -> None:
        write_lines(journal_path, header(submit_counter=40), task(7))
        o = open_sync(journal_path, opened_journals)
        assert o.header.submit_counter == 40


class TestLock:
    def test_a_second_opener_is_refused_naming_the_holder(
        self, journal_path: Path, opened_journals: list[_journal.Opened]
    ) -> None:
        open_sync(journal_path, opened_journals)
        with pytest.raises(JournalLockedError) as info:
            open_journal(journal_path, max_concurrent=1)
        assert info.value.pid == os.getpid()
        assert str(os.getpid()) in str(info.value)
        assert info.value.lock_path == str(journal_path) + ".lock"

    def test_the_lock_is_free_again_after_close(self, journal_path: Path) -> None:
        o = open_journal(journal_path, max_concurrent=1)
        Journal(o).close()
        o2 = open_journal(journal_path, max_concurrent=1)
        Journal(o2).close()


def open_sync_unregistered(path: Path) -> _journal.Opened:
    return open_journal(path, max_concurrent=1)


class TestGroupCommit:
    async def test_records_appended_together_share_one_flush(self, journal_path: Path) -> None:
        journal = Journal(await anyio.to_thread.run_sync(open_sync_unregistered, journal_path))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(journal.run)
                batches = {id(journal.append(task(n))) for n in range(1, 101)}
                assert len(batches) == 1
                await journal.flush()
                assert journal.flushes == 1
                journal.stop()
        finally:
            journal.close()
        loaded = load(journal_path)
        assert loaded is not None
        assert len(loaded.tasks) == 100

    async def test_the_writer_outlives_a_cancellation_until_stopped(
        self, journal_path: Path
    ) -> None:
        journal = Journal(await anyio.to_thread.run_sync(open_sync_unregistered, journal_path))
        try:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(journal.run)
                    await anyio.wait_all_tasks_blocked()
                    tg.cancel_scope.cancel()  # as when the scope around a pool is cancelled
                    batch = journal.append(task(1))
                    with anyio.CancelScope(shield=True):
                        await batch.wait()  # still written: the writer is shielded
                    journal.stop()
        finally:
            journal.close()
        loaded = load(journal_path)
        assert loaded is not None
        assert list(loaded.tasks) == ["t1"]

    async def test_a_record_appended_after_the_writer_stopped_fails_its_waiters(
        self, journal_path: Path
    ) -> None:
        journal = Journal(await anyio.to_thread.run_sync(open_sync_unregistered, journal_path))
        try:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(journal.run)
                    await journal.append(task(1)).wait()
                    journal.stop()
                # As a worker finishing in the same step as the pool stops: never written.
                late = journal.append(task(2))
                with pytest.raises(PoolClosedError):
                    await late.wait()
                with pytest.raises(PoolClosedError):
                    await journal.append(task(3)).wait()
        finally:
            journal.close()
        loaded = load(journal_path)
        assert loaded is not None
        assert list(loaded.tasks) == ["t1"]

    async def test_a_failed_fsync_stops_the_journal_and_is_not_retried(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls: list[int] = []

        def failing_sync(fd: int) -> None:
            calls.append(fd)
            raise OSError(errno.EIO, "injected I/O error")

        journal = Journal(await anyio.to_thread.run_sync(open_sync_unregistered, journal_path))
        monkeypatch.setattr(_journal, "_sync_data", failing_sync)
        failures: list[JournalWriteError] = []
        journal.on_failure = failures.append
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(journal.run)
                first = journal.append(task(1))
                with pytest.raises(JournalWriteError) as info:
                    await first.wait()
                assert isinstance(info.value.__cause__, OSError)
                assert info.value.__cause__.errno == errno.EIO
                later = journal.append(task(2))
                with pytest.raises(JournalWriteError):
                    await later.wait()
                with pytest.raises(JournalWriteError):
                    await journal.flush()
                journal.stop()  # the writer already returned on the failure
        finally:
            journal.close()
        assert len(calls) == 1
        assert failures == [journal.error]
