"""The journal: creation, replay, torn tails, corruption, compaction, lock, group commit."""

from __future__ import annotations

import errno
import os
import stat
import tracemalloc
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


class TestReplayInChunks:
    """The replay reads a chunk at a time: lines cut by a chunk's end replay alike."""

    @pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 22])
    @pytest.mark.parametrize(
        "tail",
        [
            pytest.param(b"", id="whole"),
            pytest.param(b'{"kind":"task","id":"t9","se', id="torn"),
            pytest.param(b"\n" + encoder.encode(task(3)) + b"\n", id="blank-line"),
            pytest.param(b"not json\n" + encoder.encode(task(3)) + b"\n", id="corrupt"),
            pytest.param(encoder.encode(header()) + b"\n", id="second-header"),
        ],
    )
    def test_every_chunk_size_replays_to_the_model(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, tail: bytes
    ) -> None:
        from tests.reliability._loader_helpers import assert_load_matches_model

        long_result = msgspec.Raw(encoder.encode(["x" * 300, 1]))
        data = write_lines(
            journal_path,
            header(),
            task(1),
            task(2, key="k2"),
            task(1, Status.RUNNING, attempts=1),
            task(1, Status.COMPLETED, attempts=1, result=long_result),
            task(2, Status.FAILED, error_type="E", error_message="é" * 50),
        )
        data += tail
        journal_path.write_bytes(data)
        monkeypatch.setattr(_journal, "_CHUNK", chunk)
        assert_load_matches_model(journal_path, data)

    def test_a_result_holds_its_own_line_not_the_chunk_it_was_read_in(
        self, journal_path: Path
    ) -> None:
        padding = "x" * 400
        records: list[Header | TaskRecord] = [header()]
        records.append(task(1, Status.COMPLETED, result=msgspec.Raw(b'{"sent":true}')))
        records += [task(2, error_message=padding) for _ in range(10_000)]  # 4 MB
        write_lines(journal_path, *records)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            loaded = load(journal_path)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert loaded is not None
        assert loaded.tasks["t1"].result == msgspec.Raw(b'{"sent":true}')
        # Two tasks' records and lines: far less than the chunk that held them.
        assert held < 100_000


class TestCompactionCopiesLines:
    def test_a_surviving_line_is_written_back_as_it_was_read(
        self, journal_path: Path, opened_journals: list[_journal.Opened]
    ) -> None:
        # Spaces that msgspec never writes: only a copy keeps them.
        done = b'{"kind": "task", "id": "t1", "seq": 1, "status": "completed", "submitted_at": 1.0}'
        data = write_lines(journal_path, header(), task(1)) + done + b"\n"
        journal_path.write_bytes(data)
        o = open_sync(journal_path, opened_journals)
        assert o.tasks[0].status is Status.COMPLETED
        assert journal_path.read_bytes().splitlines()[1] == done

    def test_an_interrupted_task_is_encoded_again(
        self, journal_path: Path, opened_journals: list[_journal.Opened]
    ) -> None:
        running = (
            b'{"kind": "task", "id": "t1", "seq": 1, "status": "running", "submitted_at": 1.0}'
        )
        data = write_lines(journal_path, header(submit_counter=1)) + running + b"\n"
        journal_path.write_bytes(data)
        open_sync(journal_path, opened_journals)
        line = journal_path.read_bytes().splitlines()[1]
        assert line == encoder.encode(task(1, recoveries=1))

    def test_with_retention_the_kept_lines_are_copied_and_the_rest_dropped(
        self, journal_path: Path, opened_journals: list[_journal.Opened]
    ) -> None:
        done = (
            b'{"kind": "task", "id": "t2", "seq": 2, "status": "failed", '
            b'"submitted_at": 2.0, "finished_at": 2.0}'
        )
        old = task(1, Status.COMPLETED, finished_at=1.0)
        data = write_lines(journal_path, header(submit_counter=2), old) + done + b"\n"
        journal_path.write_bytes(data)
        o = open_journal(journal_path, max_concurrent=2, keep_finished=1)
        opened_journals.append(o)
        assert (o.dropped, [r.id for r in o.tasks]) == (1, ["t2"])
        assert journal_path.read_bytes().splitlines()[1:] == [done]


def _compact_journal(path: Path, **header_changes: object) -> bytes:
    """A journal laid out as compaction writes it, for ``open_sync``'s settings."""
    fields: dict[str, object] = {"submit_counter": 3, **header_changes}
    return write_lines(
        path,
        header(**fields),
        task(1, Status.COMPLETED, attempts=1, result=msgspec.Raw(b"1")),
        task(2, Status.FAILED, attempts=1, error_type="E"),
        task(3, key="k3"),
    )


class TestAlreadyCompact:
    """A journal that is already what compaction would write is left as it is."""

    def test_it_keeps_its_inode_and_mtime(
        self, journal_path: Path, opened_journals: list[_journal.Opened]
    ) -> None:
        data = _compact_journal(journal_path)
        os.utime(journal_path, (1_000_000, 1_000_000))
        before = journal_path.stat()
        o = open_sync(journal_path, opened_journals)
        after = journal_path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert journal_path.read_bytes() == data
        assert [r.id for r in o.tasks] == ["t1", "t2", "t3"]

    def test_a_journal_of_only_its_header_keeps_its_inode(
        self, journal_path: Path, opened_journals: list[_journal.Opened]
    ) -> None:
        open_sync(journal_path, opened_journals)  # creates it
        for o in opened_journals:
            os.close(o.fd)
            os.close(o.lock_fd)
        opened_journals.clear()
        inode = journal_path.stat().st_ino
        open_sync(journal_path, opened_journals)
        assert journal_path.stat().st_ino == inode

    def test_it_is_synced_and_a_stray_compact_file_removed(
        self,
        journal_path: Path,
        opened_journals: list[_journal.Opened],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        _compact_journal(journal_path)
        stray = Path(f"{journal_path}.compact")
        stray.write_bytes(b"left by a crash")
        synced: list[tuple[int, int]] = []
        real_sync, real_fsync = _journal._sync_data, os.fsync

        def sync_data(fd: int) -> None:
            synced.append((os.fstat(fd).st_ino, 0))
            real_sync(fd)

        def fsync(fd: int) -> None:
            synced.append((os.fstat(fd).st_ino, 1))
            real_fsync(fd)

        monkeypatch.setattr(_journal, "_sync_data", sync_data)
        monkeypatch.setattr(os, "fsync", fsync)
        inode = journal_path.stat().st_ino
        open_sync(journal_path, opened_journals)
        assert journal_path.stat().st_ino == inode
        assert not stray.exists()
        # The contents may never have been synced (a copy; a crash after a rename).
        assert (inode, 0) in synced
        assert (journal_path.parent.stat().st_ino, 1) in synced

    @pytest.mark.parametrize(
        ("case", "expected"),
        [
            ("a running task", "recovered"),
            ("another max_concurrent", "header"),
            ("another strategy", "header"),
            ("a submit counter behind the last seq", "header"),
            ("a header written otherwise", "header"),
            ("two lines for a task", "lines"),
            ("tasks out of order", "lines"),
            ("a torn tail", "lines"),
            ("a blank line", "lines"),
            ("a finished task past retention", "dropped"),
        ],
    )
    def test_it_is_rewritten_if_compaction_would_change_it(
        self,
        journal_path: Path,
        opened_journals: list[_journal.Opened],
        case: str,
        expected: str,
    ) -> None:
        data = _compact_journal(journal_path)
        lines = data.splitlines(keepends=True)
        settings: dict[str, object] = {"max_concurrent": 2}
        if case == "a running task":
            lines[3] = encoder.encode(task(3, Status.RUNNING, key="k3", attempts=1)) + b"\n"
        elif case == "another max_concurrent":
            settings["max_concurrent"] = 3
        elif case == "another strategy":
            settings["strategy"] = "fifo"
        elif case == "a submit counter behind the last seq":
            lines[0] = encoder.encode(header(submit_counter=2)) + b"\n"
        elif case == "a header written otherwise":
            lines[0] = lines[0].replace(b'"format":1', b'"format": 1')
        elif case == "two lines for a task":
            lines.insert(1, encoder.encode(task(1)) + b"\n")
        elif case == "tasks out of order":
            lines[2], lines[3] = lines[3], lines[2]
        elif case == "a torn tail":
            lines.append(b'{"kind":"task"')
        elif case == "a blank line":
            lines.insert(2, b"\n")
        elif case == "a finished task past retention":
            settings["keep_finished"] = 1
        data = b"".join(lines)
        journal_path.write_bytes(data)
        inode = journal_path.stat().st_ino
        o = open_journal(journal_path, **settings)  # type: ignore[arg-type]
        opened_journals.append(o)
        assert journal_path.stat().st_ino != inode
        rewritten = journal_path.read_bytes()
        assert rewritten != data
        assert len(rewritten.splitlines()) == 1 + len(o.tasks)
        assert o.header.submit_counter == 3
        assert (bool(o.interrupted), bool(o.dropped)) == (
            expected == "recovered",
            expected == "dropped",
        )
        opened_journals.remove(o)
        os.close(o.fd)
        os.close(o.lock_fd)
        inode = journal_path.stat().st_ino
        opened_journals.append(open_journal(journal_path, **settings))  # type: ignore[arg-type]
        assert journal_path.stat().st_ino == inode, "once rewritten, it is compact"
        assert journal_path.read_bytes() == rewritten


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

    async def test_a_batch_writes_only_the_latest_record_of_each_task(
        self, journal_path: Path
    ) -> None:
        journal = Journal(await anyio.to_thread.run_sync(open_sync_unregistered, journal_path))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(journal.run)
                queued = journal.append(task(1))
                journal.append(task(2))
                running = journal.append(task(1, Status.RUNNING, attempts=1))
                done = journal.append(
                    task(1, Status.COMPLETED, attempts=1, result=msgspec.Raw(b"7"))
                )
                assert queued is running is done
                with anyio.fail_after(10):
                    await queued.wait()  # a waiter of a superseded record is told too
                journal.stop()
        finally:
            journal.close()
        lines = journal_path.read_bytes().splitlines()
        assert len(lines) == 3  # the header, then one line per task
        loaded = load(journal_path)
        assert loaded is not None
        assert {i: r.status for i, r in loaded.tasks.items()} == {
            "t1": Status.COMPLETED,
            "t2": Status.QUEUED,
        }

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
