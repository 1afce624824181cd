"""The command-line tool, run on journals written by a real pool and on damaged copies of them."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import msgspec
import pytest

import harnpool
from harnpool._cli import (
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_OS_ERROR,
    EXIT_REFUSED,
    EXIT_TORN,
    EXIT_UNKNOWN_TASK,
    EXIT_UNREADABLE,
    EXIT_USAGE,
    OPERATOR_ERROR_TYPE,
    main,
)
from harnpool._journal import compact, load

ROOT = Path(__file__).resolve().parent.parent

#: What the template journal holds: id -> (key, status as written).
TASKS = {
    "t1": ("invoice-1", "completed"),
    "t2": ("invoice-2", "completed"),
    "t3": ("invoice-3", "completed"),
    "t4": ("bad-1", "failed"),
    "t5": ("hang", "running"),
    "t6": ("later", "queued"),
}
TORN_FRAGMENT = b'{"kind":"task","id":"t7","seq":7,"sta'

Run = Callable[..., tuple[int, str, str]]


async def square(n: int) -> int:
    return n * n


async def refuse() -> None:
    raise ValueError("no such customer\n  (id 42)")


@harnpool.task(name="tests.test_cli.read_note")
async def read_note(path: str) -> str:
    """Fails until the note exists: a task an operator fixes the cause of, then requeues."""
    with open(path) as f:
        return f.read()


class _Stop(Exception):
    pass


async def _write_template(path: Path) -> None:
    """Three completed tasks and a failed one; then one left running and one queued."""
    async with harnpool.open_pool(path, max_concurrent=2) as pool:
        ids = [await pool.submit(square, n, key=f"invoice-{n}") for n in (1, 2, 3)]
        failing = await pool.submit(refuse, key="bad-1")
        for task_id in ids:
            await pool.wait(task_id)
        with pytest.raises(harnpool.TaskFailed):
            await pool.wait(failing)
    started = anyio.Event()

    async def hang() -> None:
        started.set()
        await anyio.sleep_forever()

    # Leaving by an exception keeps the hanging task "running" in the journal, as a crash would.
    with pytest.raises(_Stop):
        async with harnpool.open_pool(path, max_concurrent=1) as pool:  # "later" waits
            await pool.submit(hang, key="hang", priority=5)
            await pool.submit(square, 99, key="later")
            with anyio.fail_after(10):
                await started.wait()
            raise _Stop


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.jsonl"
    anyio.run(_write_template, path)
    loaded = load(path)
    assert loaded is not None
    assert {i: (r.key, r.status.value) for i, r in loaded.tasks.items()} == TASKS
    return path


@pytest.fixture
def journal(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template journal, alone in its directory."""
    path = tmp_path / "pool.jsonl"
    shutil.copyfile(template, path)
    return path


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``main`` with these arguments; return the exit code, stdout and stderr."""

    def run(*argv: str | os.PathLike[str]) -> tuple[int, str, str]:
        code = main([os.fspath(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def line_offset(path: Path, number: int) -> int:
    return sum(len(line) + 1 for line in lines(path)[: number - 1])


def tear(path: Path) -> int:
    """Append half a record, as a crash mid-write leaves it; return where it starts."""
    offset = path.stat().st_size
    with path.open("ab") as f:
        f.write(TORN_FRAGMENT)
    return offset


def corrupt(path: Path, number: int) -> int:
    """Put an invalid byte into line ``number``; return the line's offset."""
    content = lines(path)
    line = content[number - 1]
    content[number - 1] = line[:20] + b"\xff" + line[21:]
    path.write_bytes(b"".join(line + b"\n" for line in content))
    return line_offset(path, number)


def drop_header(path: Path) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines(path)[1:]))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.count("\n") == 1, err
    assert err.startswith("harnpool: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


class TestInspect:
    def test_table_shows_every_task(self, run: Run, journal: Path) -> None:
        code, out, err = run("inspect", journal)
        assert (code, err) == (EXIT_OK, "")
        rows = out.splitlines()
        assert rows[0].split() == [
            *("ID", "KEY", "PRIORITY", "STATUS", "ATTEMPTS"),
            *("SUBMITTED", "STARTED", "FINISHED", "ERROR"),
        ]
        for task_id, (key, status) in TASKS.items():
            (row,) = [r for r in rows if r.startswith(f"{task_id} ")]
            assert row.split()[1:4] == [key, "5" if key == "hang" else "0", status]
        (failed,) = [r for r in rows if r.startswith("t4 ")]
        # The message is on one line, whitespace collapsed.
        assert failed.endswith("ValueError: no such customer (id 42)")

    def test_json_prints_one_object_per_task_with_stable_fields(
        self, run: Run, journal: Path
    ) -> None:
        code, out, _ = run("inspect", "--json", journal)
        assert code == EXIT_OK
        tasks = json.loads(out)
        assert [t["id"] for t in tasks] == list(TASKS)
        assert len(out.splitlines()) == len(TASKS) + 2  # "[", one line per task, "]"
        for task in tasks:
            assert list(task) == [
                *("id", "key", "priority", "seq", "status", "function", "attempts"),
                *("submitted_at", "started_at", "finished_at", "error_type", "error_message"),
                "result",
            ]
            assert (task["key"], task["status"]) == TASKS[task["id"]]
            assert isinstance(task["submitted_at"], float)
        by_id = {t["id"]: t for t in tasks}
        assert [by_id[i]["result"] for i in ("t1", "t2", "t3")] == [1, 4, 9]
        assert by_id["t4"]["error_type"] == "builtins.ValueError"
        assert by_id["t4"]["error_message"] == "no such customer\n  (id 42)"
        assert by_id["t4"]["result"] is None
        assert by_id["t5"]["finished_at"] is None
        assert by_id["t5"]["attempts"] == 1
        assert by_id["t6"]["started_at"] is None
        assert by_id["t1"]["function"] == f"{__name__}.square"

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            (["--status", "failed"], ["t4"]),
            (["--status", "queued", "--status", "running"], ["t5", "t6"]),
            (["--key", "invoice-*"], ["t1", "t2", "t3"]),
            (["--key", "invoice-2"], ["t2"]),
            (["--key", "invoice-?", "--status", "completed"], ["t1", "t2", "t3"]),
            (["--key", "invoice-*", "--status", "failed"], []),
        ],
    )
    def test_filters_by_status_and_key(
        self, run: Run, journal: Path, filters: list[str], expected: list[str]
    ) -> None:
        code, out, _ = run("inspect", "--json", *filters, journal)
        assert code == EXIT_OK
        assert [t["id"] for t in json.loads(out)] == expected
        code, out, _ = run("inspect", *filters, journal)
        assert code == EXIT_OK
        shown = [row.split()[0] for row in out.splitlines()[1:] if row.startswith("t")]
        assert shown == expected
        if not expected:
            assert "no tasks match" in out

    def test_torn_tail_is_reported_on_stderr_and_the_rest_shown(
        self, run: Run, journal: Path
    ) -> None:
        offset = tear(journal)
        code, out, err = run("inspect", "--json", journal)
        assert code == EXIT_OK
        assert [t["id"] for t in json.loads(out)] == list(TASKS)
        assert_one_line_error(
            err, str(journal), "line 9", f"byte offset {offset}", f"{len(TORN_FRAGMENT)} bytes"
        )

    def test_unknown_status_is_a_usage_error(self, run: Run, journal: Path) -> None:
        code, _, err = run("inspect", "--status", "sleeping", journal)
        assert code == EXIT_USAGE
        assert "invalid choice: 'sleeping'" in err


class TestVerify:
    def test_sound_journal_exits_0_with_a_summary(self, run: Run, journal: Path) -> None:
        code, out, err = run("verify", journal)
        assert (code, err) == (EXIT_OK, "")
        assert out.count("\n") == 1
        assert "ok" in out
        assert "6 tasks (queued 1, running 1, completed 3, failed 1)" in out

    def test_torn_tail_exits_1_naming_line_offset_and_length(self, run: Run, journal: Path) -> None:
        offset = tear(journal)
        code, out, _ = run("verify", journal)
        assert code == EXIT_TORN
        assert f"line 9, byte offset {offset}, {len(TORN_FRAGMENT)} bytes" in out
        assert "6 tasks" in out

    def test_corrupt_middle_line_exits_2_naming_path_line_and_offset(
        self, run: Run, journal: Path
    ) -> None:
        offset = corrupt(journal, 3)
        code, out, err = run("verify", journal)
        assert (code, out) == (EXIT_UNREADABLE, "")
        assert_one_line_error(err, repr(str(journal)), "line 3", f"byte offset {offset}")

    def test_invalid_utf8_in_a_middle_line_exits_2_naming_line_and_offset(
        self, run: Run, journal: Path
    ) -> None:
        offset = line_offset(journal, 3)
        journal.write_bytes(journal.read_bytes().replace(b'"id":"t2"', b'"id":"t\xff2"'))
        bad_byte = journal.read_bytes().splitlines()[2].index(b"\xff")
        code, _, err = run("verify", journal)
        assert code == EXIT_UNREADABLE
        reason = f"invalid UTF-8 at byte {bad_byte}"
        assert_one_line_error(err, str(journal), "line 3", f"byte offset {offset}", reason)
        new = journal.with_name("salvaged.jsonl")
        code, out, _ = run("salvage", journal, "-o", new)
        assert code == EXIT_OK
        assert f"dropped line 3 (byte offset {offset}, " in out

    def test_core_load_names_invalid_utf8_as_corruption(self, journal: Path) -> None:
        journal.write_bytes(journal.read_bytes().replace(b'"id":"t2"', b'"id":"t\xff2"'))
        with pytest.raises(harnpool.JournalCorruptError) as caught:
            load(journal)
        assert (caught.value.line, caught.value.offset) == (3, line_offset(journal, 3))

    def test_missing_header_exits_2(self, run: Run, journal: Path) -> None:
        drop_header(journal)
        code, _, err = run("verify", journal)
        assert code == EXIT_UNREADABLE
        assert_one_line_error(err, str(journal), "line 1", "not a header")

    def test_missing_file_exits_2(self, run: Run, tmp_path: Path) -> None:
        code, _, err = run("verify", tmp_path / "absent.jsonl")
        assert code == EXIT_UNREADABLE
        assert_one_line_error(err, "absent.jsonl", "does not exist")
        assert list(tmp_path.iterdir()) == []

    def test_newer_format_exits_2(self, run: Run, journal: Path) -> None:
        content = journal.read_bytes()
        journal.write_bytes(content.replace(b'"format":1,', b'"format":99,', 1))
        code, _, err = run("verify", journal)
        assert code == EXIT_UNREADABLE
        assert_one_line_error(err, str(journal), "format 99")

    @pytest.mark.parametrize("damage", ["none", "torn", "corrupt"])
    def test_verify_and_inspect_change_nothing(self, run: Run, journal: Path, damage: str) -> None:
        if damage == "torn":
            tear(journal)
        elif damage == "corrupt":
            corrupt(journal, 4)
        before = snapshot(journal.parent)
        run("verify", journal)
        run("inspect", journal)
        run("inspect", "--json", journal)
        assert snapshot(journal.parent) == before  # no lock file, no rewrite


class TestCompact:
    async def test_does_what_opening_a_pool_does(self, run: Run, journal: Path) -> None:
        tear(journal)
        by_pool = journal.with_name("by-pool.jsonl")
        shutil.copyfile(journal, by_pool)
        before = journal.stat().st_size
        code, out, err = await anyio.to_thread.run_sync(run, "compact", journal)
        assert (code, err) == (EXIT_OK, "")
        # The header keeps the max_concurrent the template was last opened with.
        async with harnpool.open_pool(by_pool, max_concurrent=1) as pool:
            assert pool.recovery.requeued == ("t5",)
        assert journal.read_bytes() == by_pool.read_bytes()
        after = journal.stat().st_size
        assert f"{before} -> {after} bytes, 9 -> 7 lines" in out
        assert "queued again" in out
        assert "t5" in out
        assert "torn tail at line 9" in out
        assert not journal.with_name("pool.jsonl.compact").exists()
        code, out, _ = await anyio.to_thread.run_sync(run, "verify", journal)
        assert code == EXIT_OK
        assert "6 tasks (queued 2, completed 3, failed 1), 7 lines" in out

    def test_missing_journal_exits_2_and_creates_nothing(self, run: Run, tmp_path: Path) -> None:
        code, _, err = run("compact", tmp_path / "absent.jsonl")
        assert code == EXIT_UNREADABLE
        assert_one_line_error(err, "absent.jsonl", "does not exist")
        assert list(tmp_path.iterdir()) == []

    def test_corrupt_journal_exits_2_and_is_left_untouched(self, run: Run, journal: Path) -> None:
        offset = corrupt(journal, 5)
        before = journal.read_bytes()
        code, _, err = run("compact", journal)
        assert code == EXIT_UNREADABLE
        assert_one_line_error(err, "line 5", f"byte offset {offset}")
        assert journal.read_bytes() == before


class TestSalvage:
    async def test_corrupt_middle_line_is_dropped_and_the_rest_reopens(
        self, run: Run, journal: Path
    ) -> None:
        offset = corrupt(journal, 3)  # t2's only record
        original = journal.read_bytes()
        new = journal.with_name("salvaged.jsonl")
        code, out, err = await anyio.to_thread.run_sync(run, "salvage", journal, "--output", new)
        assert (code, err) == (EXIT_OK, "")
        assert f"dropped line 3 (byte offset {offset}, {len(lines(journal)[2]) + 1} bytes)" in out
        assert "kept 7 of 8 lines" in out
        assert journal.read_bytes() == original
        assert lines(new) == [line for n, line in enumerate(lines(journal), 1) if n != 3]
        async with harnpool.open_pool(new) as pool:
            statuses = {info.id: info.status.value for info in pool.tasks()}
            assert await pool.wait("t1") == 1
        expected = {i: s for i, (_, s) in TASKS.items() if i != "t2"}
        assert statuses == {**expected, "t5": "queued"}  # opening requeues the running task

    async def test_missing_header_is_synthesised_and_says_so(self, run: Run, journal: Path) -> None:
        drop_header(journal)
        original = journal.read_bytes()
        new = journal.with_name("salvaged.jsonl")
        code, out, _ = await anyio.to_thread.run_sync(run, "salvage", journal, "-o", new)
        assert code == EXIT_OK
        assert "no decodable header: wrote a new one" in out
        assert "submit counter 6" in out
        assert "dropped nothing" in out
        assert journal.read_bytes() == original
        async with harnpool.open_pool(new) as pool:
            assert [info.id for info in pool.tasks()] == list(TASKS)
            # The counter was carried over: a new task does not reuse a kept id.
            assert await pool.submit(square, 7, key="new") == "t7"

    def test_torn_tail_and_second_header_are_dropped(self, run: Run, journal: Path) -> None:
        content = lines(journal)
        second_header_offset = line_offset(journal, 5)
        journal.write_bytes(b"".join(line + b"\n" for line in [*content[:4], content[0]]))
        with journal.open("ab") as f:
            f.write(b"".join(line + b"\n" for line in content[4:]))
        torn_offset = tear(journal)
        new = journal.with_name("salvaged.jsonl")
        code, out, _ = run("salvage", journal, "-o", new)
        assert code == EXIT_OK
        assert f"dropped line 5 (byte offset {second_header_offset}, " in out
        assert "a second header" in out
        assert f"dropped line 10 (byte offset {torn_offset}, {len(TORN_FRAGMENT)} bytes)" in out
        code, out, _ = run("verify", new)
        assert code == EXIT_OK
        assert "6 tasks" in out

    def test_sound_journal_is_copied_whole(self, run: Run, journal: Path) -> None:
        new = journal.with_name("copy.jsonl")
        code, out, _ = run("salvage", journal, "-o", new)
        assert code == EXIT_OK
        assert "dropped nothing" in out
        assert new.read_bytes() == journal.read_bytes()

    def test_existing_output_is_refused_unless_forced(self, run: Run, journal: Path) -> None:
        new = journal.with_name("salvaged.jsonl")
        new.write_bytes(b"precious\n")
        code, out, err = run("salvage", journal, "-o", new)
        assert (code, out) == (EXIT_REFUSED, "")
        assert_one_line_error(err, str(new), "--force")
        assert new.read_bytes() == b"precious\n"
        code, _, _ = run("salvage", journal, "-o", new, "--force")
        assert code == EXIT_OK
        assert new.read_bytes() == journal.read_bytes()

    def test_output_may_not_be_the_journal(self, run: Run, journal: Path) -> None:
        tear(journal)
        original = journal.read_bytes()
        code, _, err = run("salvage", journal, "-o", journal, "--force")
        assert code == EXIT_REFUSED
        assert_one_line_error(err, "the journal itself")
        assert journal.read_bytes() == original

    def test_missing_journal_exits_2(self, run: Run, tmp_path: Path) -> None:
        code, _, err = run("salvage", tmp_path / "absent.jsonl", "-o", tmp_path / "new.jsonl")
        assert code == EXIT_UNREADABLE
        assert_one_line_error(err, "absent.jsonl", "does not exist")
        assert list(tmp_path.iterdir()) == []


class TestWhileAPoolIsOpen:
    async def test_inspect_and_verify_read_a_snapshot(self, run: Run, journal: Path) -> None:
        async with harnpool.open_pool(journal) as pool:
            await pool.submit(square, 5, key="invoice-5")
            code, out, _ = await anyio.to_thread.run_sync(run, "inspect", "--json", journal)
            assert code == EXIT_OK
            assert [t["key"] for t in json.loads(out)][-1] == "invoice-5"
            code, out, _ = await anyio.to_thread.run_sync(run, "verify", journal)
            assert code == EXIT_OK
            assert "7 tasks" in out

    async def test_compact_and_salvage_are_refused_naming_the_holder(
        self, run: Run, journal: Path
    ) -> None:
        new = journal.with_name("salvaged.jsonl")
        async with harnpool.open_pool(journal):
            before = journal.read_bytes()
            code, out, err = await anyio.to_thread.run_sync(run, "compact", journal)
            assert (code, out) == (EXIT_LOCKED, "")
            assert_one_line_error(err, str(journal), f"process {os.getpid()}")
            code, out, err = await anyio.to_thread.run_sync(run, "salvage", journal, "-o", new)
            assert (code, out) == (EXIT_LOCKED, "")
            assert_one_line_error(err, str(journal), f"process {os.getpid()}")
            assert journal.read_bytes() == before
            assert not new.exists()

    async def test_another_process_is_refused_and_can_verify(self, journal: Path) -> None:
        command = [sys.executable, "-m", "harnpool"]
        async with harnpool.open_pool(journal):
            before = journal.read_bytes()
            refused = await anyio.run_process([*command, "compact", journal], check=False)
            verified = await anyio.run_process([*command, "verify", journal], check=False)
            assert journal.read_bytes() == before
        assert refused.returncode == EXIT_LOCKED
        assert f"locked by process {os.getpid()}" in refused.stderr.decode()
        assert refused.stderr.decode().count("\n") == 1
        assert verified.returncode == EXIT_OK
        assert "6 tasks" in verified.stdout.decode()


class TestCommandLine:
    def test_help_documents_every_exit_code(self, run: Run) -> None:
        code, out, _ = run("--help")
        assert code == EXIT_OK
        for command in ("inspect", "verify", "compact", "salvage", "cancel", "fail", "requeue"):
            assert f"\n    {command} " in out
        codes = (EXIT_OK, EXIT_TORN, EXIT_UNREADABLE, EXIT_LOCKED, EXIT_REFUSED, EXIT_OS_ERROR)
        for exit_code in (*codes, EXIT_UNKNOWN_TASK):
            assert f"\n  {exit_code}   " in out
        for exit_code in (EXIT_USAGE, 70):
            assert f"\n  {exit_code}  " in out

    @pytest.mark.parametrize(
        "argv", [[], ["inspect"], ["frobnicate", "x"], ["salvage", "x"], ["verify", "--bogus"]]
    )
    def test_usage_errors_exit_64(self, run: Run, argv: list[str]) -> None:
        code, out, err = run(*argv)
        assert (code, out) == (EXIT_USAGE, "")
        assert "usage: harnpool" in err

    def test_unexpected_error_is_one_line_with_its_own_code(
        self, run: Run, journal: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def broken(path: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr("harnpool._cli.load", broken)
        code, _, err = run("inspect", journal)
        assert code == 70
        assert_one_line_error(err, str(journal), "builtins.RuntimeError: a bug")

    def test_unreadable_file_is_an_os_error(self, run: Run, tmp_path: Path) -> None:
        code, _, err = run("verify", tmp_path)  # a directory
        assert code == 5
        assert_one_line_error(err, str(tmp_path))


async def harnpool_process(*argv: str | os.PathLike[str]) -> tuple[int, str, str]:
    """Run ``python -m harnpool`` in a child process; return the exit code, stdout and stderr."""
    done = await anyio.run_process(
        [sys.executable, "-m", "harnpool", *(os.fspath(a) for a in argv)], check=False
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def statuses(path: Path) -> dict[str, str]:
    loaded = load(path)
    assert loaded is not None
    return {task_id: record.status.value for task_id, record in loaded.tasks.items()}


class TestCancelFailRequeue:
    async def test_cancel_is_durable_and_wait_reports_it(self, journal: Path) -> None:
        code, out, err = await harnpool_process("cancel", journal, "t5", "t6", "--reason", "stuck")
        assert (code, err) == (EXIT_OK, "")
        assert "t5 (key 'hang'): running -> cancelled" in out
        assert "t6 (key 'later'): queued -> cancelled" in out
        assert statuses(journal) == {
            **{i: s for i, (_, s) in TASKS.items()},
            "t5": "cancelled",
            "t6": "cancelled",
        }
        async with harnpool.open_pool(journal) as pool:
            assert pool.recovery.requeued == ()
            for task_id in ("t5", "t6"):
                info = pool.info(task_id)
                assert info.status is harnpool.Status.CANCELLED
                assert info.reason == "cancelled by operator: stuck"
                assert info.finished_at is not None
                with pytest.raises(harnpool.TaskCancelled) as caught:
                    await pool.wait(task_id)
                assert caught.value.task_id == task_id
            # The key still deduplicates: the cancelled task does not run again.
            assert await pool.submit(square, 99, key="later") == "t6"
            assert pool.info("t6").status is harnpool.Status.CANCELLED

    async def test_fail_is_durable_and_wait_raises_task_failed(self, journal: Path) -> None:
        code, out, err = await harnpool_process("fail", journal, "t6", "--reason", "poison input")
        assert (code, err) == (EXIT_OK, "")
        assert "t6 (key 'later'): queued -> failed" in out
        async with harnpool.open_pool(journal) as pool:
            with pytest.raises(harnpool.TaskFailed) as caught:
                await pool.wait("t6")
            assert caught.value.error_type == OPERATOR_ERROR_TYPE
            assert caught.value.error_message == "failed by operator: poison input"
            assert await pool.submit(square, 99, key="later") == "t6"
            assert pool.info("t5").status is harnpool.Status.QUEUED
        # t5 was left running: the command queued it again, as opening a pool does.
        assert "queued again (they were running when their process stopped): t5" in out

    async def test_requeue_of_a_completed_task_runs_it_again_by_key(self, journal: Path) -> None:
        before = load(journal)
        assert before is not None
        code, out, err = await harnpool_process("requeue", journal, "t2")
        assert (code, err) == (EXIT_OK, "")
        assert "t2 (key 'invoice-2'): completed -> queued" in out
        assert "submitted again with key 'invoice-2'" in out
        assert "earlier result is discarded" in out
        after = load(journal)
        assert after is not None
        old, new = before.tasks["t2"], after.tasks["t2"]
        assert (new.id, new.key, new.priority, new.seq) == (old.id, old.key, old.priority, old.seq)
        assert new.result is msgspec.UNSET
        assert (new.finished_at, new.started_at, new.error_type, new.attempts) == (
            None,
            None,
            None,
            0,
        )
        async with harnpool.open_pool(journal) as pool:
            assert pool.info("t2").status is harnpool.Status.QUEUED
            # The submit re-attaches the queued task (same id) with these arguments and runs it.
            assert await pool.submit(square, 12, key="invoice-2") == "t2"
            with anyio.fail_after(10):
                assert await pool.wait("t2") == 144
            assert pool.info("t2").attempts == 1

    async def test_requeue_of_a_crash_looped_task_gives_it_a_fresh_count(
        self, journal: Path
    ) -> None:
        # t6 as a task that crashed its process more often than max_recoveries allows.
        loaded = load(journal)
        assert loaded is not None
        tasks = [
            msgspec.structs.replace(r, recoveries=6) if r.id == "t6" else r
            for r in loaded.tasks.values()
        ]
        compact(str(journal), loaded.header, tasks)
        async with harnpool.open_pool(journal, max_recoveries=5) as pool:
            assert pool.recovery.crash_looped == ("t6",)
        code, out, err = await harnpool_process("requeue", journal, "t6")
        assert (code, err) == (EXIT_OK, "")
        assert "t6 (key 'later'): failed -> queued" in out
        requeued = load(journal)
        assert requeued is not None
        assert (requeued.tasks["t6"].attempts, requeued.tasks["t6"].recoveries) == (0, 0)
        async with harnpool.open_pool(journal, max_recoveries=5) as pool:
            assert pool.recovery.crash_looped == ()
            assert await pool.submit(square, 9, key="later") == "t6"
            with anyio.fail_after(10):
                assert await pool.wait("t6") == 81

    async def test_requeue_of_a_failed_registered_task_resumes_on_reopen(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "notes.jsonl"
        note = tmp_path / "note.txt"
        async with harnpool.open_pool(path) as pool:
            task_id = await pool.submit(read_note, os.fspath(note), key="note")
            with pytest.raises(harnpool.TaskFailed):
                await pool.wait(task_id)
        note.write_text("hello")  # the operator fixes the cause
        code, out, _ = await harnpool_process("requeue", path, task_id)
        assert code == EXIT_OK
        assert "failed -> queued" in out
        assert "resumes when a pool opens the journal" in out
        async with harnpool.open_pool(path) as pool:
            assert pool.recovery.resumed == (task_id,)
            with anyio.fail_after(10):
                assert await pool.wait(task_id) == "hello"

    def test_requeue_of_a_running_task_queues_it_with_fresh_attempts(
        self, run: Run, journal: Path
    ) -> None:
        code, out, _ = run("requeue", journal, "t5", "t4")
        assert code == EXIT_OK
        assert "t5 (key 'hang'): running -> queued" in out
        assert "t4 (key 'bad-1'): failed -> queued" in out
        loaded = load(journal)
        assert loaded is not None
        assert [(loaded.tasks[i].status.value, loaded.tasks[i].attempts) for i in ("t4", "t5")] == [
            ("queued", 0),
            ("queued", 0),
        ]
        assert loaded.tasks["t4"].error_message is None

    @pytest.mark.parametrize("command", ["cancel", "fail", "requeue"])
    def test_unknown_ids_exit_6_naming_them_and_write_nothing(
        self, run: Run, journal: Path, command: str
    ) -> None:
        before = journal.read_bytes()
        code, out, err = run(command, journal, "t1", "t99", "t5", "nope")
        assert (code, out) == (EXIT_UNKNOWN_TASK, "")
        assert_one_line_error(err, str(journal), "'t99', 'nope'", "nothing was written")
        assert journal.read_bytes() == before

    @pytest.mark.parametrize("command", ["cancel", "fail"])
    def test_finished_tasks_are_refused_and_nothing_is_written(
        self, run: Run, journal: Path, command: str
    ) -> None:
        before = journal.read_bytes()
        code, out, err = run(command, journal, "t6", "t1", "t4")
        assert (code, out) == (EXIT_REFUSED, "")
        assert_one_line_error(
            err, "t1 (key 'invoice-1') has already completed", "t4 (key 'bad-1') has already failed"
        )
        assert "nothing was written" in err
        assert journal.read_bytes() == before  # t6 stays queued too

    def test_requeue_refuses_a_queued_task(self, run: Run, journal: Path) -> None:
        before = journal.read_bytes()
        code, _, err = run("requeue", journal, "t1", "t6")
        assert code == EXIT_REFUSED
        assert_one_line_error(err, "t6 (key 'later') is already queued")
        assert journal.read_bytes() == before

    async def test_requeue_refuses_what_nothing_could_run_again(self, tmp_path: Path) -> None:
        path = tmp_path / "pool.jsonl"
        async with harnpool.open_pool(path) as pool:
            keyless = await pool.submit(square, 2)
            registered = await pool.submit(read_note, os.fspath(tmp_path / "absent"), key="x")
            done = await pool.submit(read_note, os.fspath(path), key="done")
            await pool.wait(keyless)
            await pool.wait(done)
            with pytest.raises(harnpool.TaskFailed):
                await pool.wait(registered)
        before = path.read_bytes()
        code, _, err = await harnpool_process("requeue", path, keyless, done, registered)
        assert code == EXIT_REFUSED
        assert_one_line_error(
            err,
            f"task {keyless} has no key and no registered function",
            f"task {done} (key 'done') completed, which dropped its arguments",
        )
        assert registered not in err
        assert path.read_bytes() == before

    def test_a_torn_tail_is_dropped_first_as_opening_would(self, run: Run, journal: Path) -> None:
        tear(journal)
        code, out, _ = run("cancel", journal, "t6")
        assert code == EXIT_OK
        assert "dropped the torn tail at line 9" in out
        assert "queued again (they were running when their process stopped): t5" in out
        assert statuses(journal)["t6"] == "cancelled"
        assert statuses(journal)["t5"] == "queued"

    async def test_refused_while_a_pool_holds_the_journal_naming_it(self, journal: Path) -> None:
        async with harnpool.open_pool(journal):
            before = journal.read_bytes()
            for command in ("cancel", "fail", "requeue"):
                code, out, err = await harnpool_process(command, journal, "t6")
                assert (code, out) == (EXIT_LOCKED, "")
                assert_one_line_error(err, str(journal), f"locked by process {os.getpid()}")
            assert journal.read_bytes() == before

    def test_the_rewrite_is_fsynced_before_and_after_it_replaces_the_journal(
        self, run: Run, journal: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        steps: list[str] = []
        fsync, replace = os.fsync, os.replace

        def logged_fsync(fd: int) -> None:
            steps.append("fsync")
            fsync(fd)

        def logged_replace(source: str, target: str) -> None:
            steps.append("replace")
            replace(source, target)

        monkeypatch.setattr(os, "fsync", logged_fsync)
        monkeypatch.setattr(os, "replace", logged_replace)
        code, _, _ = run("fail", journal, "t6")
        assert code == EXIT_OK
        assert steps == ["fsync", "replace", "fsync"]  # the file, then its directory

    def test_a_blank_reason_is_a_usage_error(self, run: Run, journal: Path) -> None:
        before = journal.read_bytes()
        code, _, err = run("fail", journal, "t6", "--reason", "  ")
        assert code == EXIT_USAGE
        assert "reason must not be blank" in err
        assert journal.read_bytes() == before


#: A record whose field nests deeper than any decoder recurses.
NESTED = b'{"kind":"task","extra":' + b"[" * 100_000 + b"]" * 100_000 + b"}"


class TestSalvageKeepsSomethingOrFails:
    def test_nothing_decodable_exits_2_and_writes_nothing(self, run: Run, tmp_path: Path) -> None:
        journal = tmp_path / "pool.jsonl"
        journal.write_bytes(b"garbage\n[1, 2]\n\n")
        new = tmp_path / "new.jsonl"
        code, out, err = run("salvage", journal, "-o", new)
        assert (code, out) == (EXIT_UNREADABLE, "")
        assert_one_line_error(err, "nothing to salvage", str(journal), "wrote nothing")
        assert not new.exists()

    def test_empty_journal_has_nothing_to_salvage(self, run: Run, tmp_path: Path) -> None:
        journal = tmp_path / "pool.jsonl"
        journal.write_bytes(b"")
        code, _, err = run("salvage", journal, "-o", tmp_path / "new.jsonl")
        assert code == EXIT_UNREADABLE
        assert_one_line_error(err, "nothing to salvage")

    async def test_deeply_nested_line_is_dropped_in_harnpools_words(self, journal: Path) -> None:
        content = lines(journal)
        nested = NESTED
        journal.write_bytes(b"".join(line + b"\n" for line in [*content[:2], nested, *content[2:]]))
        new = journal.with_name("salvaged.jsonl")
        code, out, err = await harnpool_process("salvage", journal, "-o", new)
        assert (code, err) == (EXIT_OK, "")
        assert "dropped line 3 (byte offset" in out
        assert "undecodable: nested too deeply to decode" in out
        assert "6 tasks" in out

    async def test_only_a_deeply_nested_line_exits_2(self, tmp_path: Path) -> None:
        journal = tmp_path / "pool.jsonl"
        journal.write_bytes(NESTED + b"\n")
        new = tmp_path / "new.jsonl"
        code, out, err = await harnpool_process("salvage", journal, "-o", new)
        assert (code, out) == (EXIT_UNREADABLE, "")
        assert_one_line_error(err, "nothing to salvage")
        assert not new.exists()


NEWER_HEADER = (
    b'{"kind":"header","format":99,"pool_id":"p","created_at":1.0,'
    b'"max_concurrent":1,"submit_counter":1}'
)
LEASE = b'{"kind":"lease","holder":"node-2","until":2.0}'
TASK = b'{"kind":"task","id":"t1","seq":1,"status":"queued","submitted_at":1.0}'


class TestNewerFormat:
    @pytest.mark.parametrize(
        "body",
        [
            pytest.param([NEWER_HEADER, LEASE, TASK], id="unknown-kind-in-the-middle"),
            pytest.param([NEWER_HEADER, TASK, LEASE, TASK], id="unknown-kind-later"),
            pytest.param([b"", NEWER_HEADER, LEASE, TASK], id="blank-first-line-slow-path"),
            pytest.param(
                [NEWER_HEADER.replace(b'"max_concurrent":1', b'"max_concurrent":"auto"'), TASK],
                id="retyped-header-field",
            ),
        ],
    )
    def test_is_too_new_not_corrupt(self, run: Run, tmp_path: Path, body: list[bytes]) -> None:
        journal = tmp_path / "pool.jsonl"
        journal.write_bytes(b"".join(line + b"\n" for line in body))
        with pytest.raises(harnpool.JournalVersionError) as caught:
            load(journal)
        assert (caught.value.found, caught.value.supported) == (99, 1)
        for argv in (["verify"], ["inspect"], ["salvage", "-o", os.fspath(tmp_path / "new")]):
            code, _, err = run(*argv, journal)
            assert code == EXIT_UNREADABLE, argv
            assert_one_line_error(err, str(journal), "has format 99", "upgrade harnpool")
            assert "is corrupt at" not in err
        assert not (tmp_path / "new").exists()


class TestInspectEscapes:
    async def test_control_characters_in_keys_and_errors_are_escaped(
        self, run: Run, tmp_path: Path
    ) -> None:
        journal = tmp_path / "pool.jsonl"
        key = "a\nb\x1b[31mred\u202e"
        message = "boom \x1b[31mred\x1b[0m\x07"

        async def explode() -> None:
            raise ValueError(message)

        async with harnpool.open_pool(journal) as pool:
            task_id = await pool.submit(explode, key=key)
            with pytest.raises(harnpool.TaskFailed):
                await pool.wait(task_id)
        code, out, _ = run("inspect", journal)
        assert code == EXIT_OK
        assert "\x1b" not in out
        assert "\x07" not in out
        assert "\u202e" not in out
        rows = out.splitlines()
        assert len(rows) == 4  # header, one task, blank line, summary
        assert "a\\nb\\x1b[31mred\\u202e" in rows[1]
        assert rows[1].endswith("ValueError: boom \\x1b[31mred\\x1b[0m\\x07")
        code, out, _ = run("inspect", "--json", journal)
        (task,) = json.loads(out)
        assert (task["key"], task["error_message"]) == (key, message)


class TestNotAJournalFile:
    @pytest.mark.parametrize(
        "argv",
        [
            ["compact", "{dir}"],
            ["compact", "{dir}/"],
            ["salvage", "{dir}", "-o", "{tmp}/new.jsonl"],
            ["cancel", "{dir}", "t1"],
        ],
    )
    def test_a_directory_leaves_no_lock_file(
        self, run: Run, tmp_path: Path, argv: list[str]
    ) -> None:
        directory = tmp_path / "journal.jsonl"
        directory.mkdir()
        code, out, err = run(*(a.format(dir=directory, tmp=tmp_path) for a in argv))
        assert (code, out) == (EXIT_OS_ERROR, "")
        assert_one_line_error(err, str(directory), "is a directory")
        assert [p.name for p in tmp_path.rglob("*")] == ["journal.jsonl"]

    def test_salvage_into_a_missing_directory_leaves_no_lock_file(
        self, run: Run, journal: Path
    ) -> None:
        before = snapshot(journal.parent)
        code, out, err = run("salvage", journal, "-o", journal.parent / "missing" / "new.jsonl")
        assert (code, out) == (EXIT_OS_ERROR, "")
        assert_one_line_error(err, "missing", "does not exist")
        assert snapshot(journal.parent) == before

    def test_salvage_over_a_directory_is_refused_without_a_lock_file(
        self, run: Run, journal: Path
    ) -> None:
        output = journal.parent / "out"
        output.mkdir()
        before = sorted(p.name for p in journal.parent.iterdir())
        code, _, err = run("salvage", journal, "-o", output, "--force")
        assert code == EXIT_REFUSED
        assert_one_line_error(err, "is a directory")
        assert sorted(p.name for p in journal.parent.iterdir()) == before

    def test_compact_of_a_path_in_a_missing_directory_exits_2(
        self, run: Run, tmp_path: Path
    ) -> None:
        code, _, err = run("compact", tmp_path / "missing" / "pool.jsonl")
        assert code == EXIT_UNREADABLE
        assert_one_line_error(err, "does not exist")
        assert list(tmp_path.iterdir()) == []
