"""One journal, one owner, whatever the path: links, modes, OS errors and the lock's pid.

Symbolic and hard links are made for real. Errors are real where the test
process can cause them (a missing directory gives ENOENT; a child process with
a low RLIMIT_NOFILE gives EMFILE); the rest are injected: the suite runs as
root, for whom permission bits do not deny anything, and a read-only or full
file system cannot be mounted here. Injection replaces the ``os`` (and
``fcntl``, and ``open``) that ``harnpool._journal`` sees, so nothing outside
the journal module is touched, and fails one chosen call with a chosen errno.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import harnpool
from harnpool import _cli, _journal
from harnpool._journal import Journal, load, open_journal


async def echo(n: int) -> int:
    return n


def _open_and_close(path: Path | str) -> None:
    Journal(open_journal(path, max_concurrent=1)).close()


def _listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture
def existing(journal_path: Path) -> Path:
    """A journal with one queued task."""

    async def fill() -> None:
        async with harnpool.open_pool(journal_path) as pool:
            for n in range(2):
                await pool.wait(await pool.submit(echo, n, key=f"k{n}"))

    anyio.run(fill)
    return journal_path


class TestSymbolicLinks:
    async def test_opening_through_a_link_keeps_the_link_and_rewrites_its_target(
        self, tmp_path: Path
    ) -> None:
        target = tmp_path / "data" / "pool.jsonl"
        target.parent.mkdir()
        link = tmp_path / "pool.jsonl"
        link.symlink_to(target)
        for n in range(2):  # the second open compacts through the link
            async with harnpool.open_pool(link) as pool:
                assert pool.path == str(link)
                assert await pool.wait(await pool.submit(echo, n, key=f"k{n}")) == n
        assert link.is_symlink()
        assert os.readlink(link) == str(target)
        loaded = load(target)
        assert loaded is not None
        assert sorted(t.key or "" for t in loaded.tasks.values()) == ["k0", "k1"]
        assert _listing(tmp_path) == [
            "data",
            "data/pool.jsonl",
            "data/pool.jsonl.lock",
            "pool.jsonl",
        ]

    @pytest.mark.parametrize("first", ["link", "target"])
    def test_a_link_and_its_target_exclude_each_other(self, tmp_path: Path, first: str) -> None:
        target = tmp_path / "pool.jsonl"
        link = tmp_path / "other-name.jsonl"
        link.symlink_to(target.name)  # relative, as ln -s makes them
        paths = {"link": link, "target": target}
        second = "target" if first == "link" else "link"
        held = open_journal(paths[first], max_concurrent=1)
        try:
            with pytest.raises(harnpool.JournalLockedError) as caught:
                open_journal(paths[second], max_concurrent=1)
        finally:
            Journal(held).close()
        assert caught.value.pid == os.getpid()
        assert caught.value.lock_path == f"{target}.lock"
        assert caught.value.path == str(paths[second])
        message = str(caught.value)
        assert str(paths[second]) in message
        assert str(target) in message  # the file the link resolves to, too
        assert link.is_symlink()

    def test_a_linked_directory_is_resolved(self, tmp_path: Path) -> None:
        real = tmp_path / "real"
        real.mkdir()
        (tmp_path / "alias").symlink_to(real)
        _open_and_close(tmp_path / "alias" / "pool.jsonl")
        held = open_journal(real / "pool.jsonl", max_concurrent=1)
        try:
            with pytest.raises(harnpool.JournalLockedError):
                open_journal(tmp_path / "alias" / "pool.jsonl", max_concurrent=1)
        finally:
            Journal(held).close()
        assert _listing(real) == ["pool.jsonl", "pool.jsonl.lock"]

    def test_a_dangling_link_creates_its_target(self, tmp_path: Path) -> None:
        link = tmp_path / "pool.jsonl"
        link.symlink_to(tmp_path / "target.jsonl")
        opened = open_journal(link, max_concurrent=1)
        Journal(opened).close()
        assert opened.created
        assert opened.real_path == str(tmp_path / "target.jsonl")
        assert link.is_symlink()
        assert load(tmp_path / "target.jsonl") is not None

    def test_the_command_line_compacts_through_a_link(
        self, existing: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        link = tmp_path / "link.jsonl"
        link.symlink_to(existing)
        assert _cli.main(["compact", str(link)]) == _cli.EXIT_OK
        assert link.is_symlink()
        assert not (tmp_path / "link.jsonl.lock").exists()
        assert (tmp_path / "link.jsonl.compact").exists() is False
        loaded = load(existing)
        assert loaded is not None
        assert len(loaded.tasks) == 2


class TestHardLinks:
    @pytest.mark.parametrize("opened_before", [False, True])
    def test_a_journal_with_two_names_is_refused_before_any_write(
        self, existing: Path, tmp_path: Path, opened_before: bool
    ) -> None:
        if not opened_before:
            (tmp_path / "pool.jsonl.lock").unlink()
        second = tmp_path / "second-name.jsonl"
        os.link(existing, second)
        data = existing.read_bytes()
        before = _listing(tmp_path)
        for name in (existing, second):
            with pytest.raises(harnpool.JournalLinkError) as caught:
                open_journal(name, max_concurrent=1)
            assert isinstance(caught.value, harnpool.JournalError)
            assert caught.value.path == str(name)
            assert caught.value.links == 2
            assert str(name) in str(caught.value)
            assert "2 hard links" in str(caught.value)
        assert _listing(tmp_path) == before  # not even a lock file
        assert existing.read_bytes() == data
        assert os.stat(existing).st_nlink == 2

    def test_the_command_line_refuses_to_compact_it(
        self, existing: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        os.link(existing, tmp_path / "second-name.jsonl")
        data = existing.read_bytes()
        assert _cli.main(["compact", str(existing)]) == _cli.EXIT_REFUSED
        assert "2 hard links" in capsys.readouterr().err
        assert existing.read_bytes() == data
        assert os.stat(existing).st_nlink == 2


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


class TestModes:
    @pytest.mark.parametrize("mode", [0o600, 0o640, 0o604, 0o660])
    def test_compaction_keeps_the_mode(self, existing: Path, mode: int) -> None:
        existing.chmod(mode)
        with _umask(0o022):
            _open_and_close(existing)
        assert stat.S_IMODE(existing.stat().st_mode) == mode

    @pytest.mark.parametrize(("mask", "mode"), [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
    def test_a_new_journal_and_its_lock_get_the_umask_default(
        self, journal_path: Path, mask: int, mode: int
    ) -> None:
        with _umask(mask):
            _open_and_close(journal_path)
        assert stat.S_IMODE(journal_path.stat().st_mode) == mode
        lock = journal_path.with_name(journal_path.name + ".lock")
        assert stat.S_IMODE(lock.stat().st_mode) == mode

    def test_a_new_lock_file_gets_the_journals_read_and_write_bits(self, existing: Path) -> None:
        lock = existing.with_name(existing.name + ".lock")
        lock.unlink()
        existing.chmod(0o600)
        with _umask(0o022):
            _open_and_close(existing)
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600

    @pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
    def test_compaction_keeps_the_owner_and_group(self, existing: Path) -> None:
        os.chown(existing, 65534, 65534)
        existing.chmod(0o640)
        _open_and_close(existing)
        status = existing.stat()
        assert (status.st_uid, status.st_gid) == (65534, 65534)
        assert stat.S_IMODE(status.st_mode) == 0o640

    @pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
    def test_an_owner_it_may_not_set_does_not_stop_compaction(self, existing: Path) -> None:
        os.chown(existing, 65534, 65534)
        existing.chmod(0o600)
        refused: list[tuple[int, int]] = []

        def fchown(fd: int, uid: int, gid: int) -> None:
            refused.append((uid, gid))
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

        with _faulty(fchown=fchown):
            _open_and_close(existing)
        assert refused == [(65534, 65534), (-1, 65534)]  # the owner, then the group alone
        assert existing.stat().st_uid == os.geteuid()
        assert stat.S_IMODE(existing.stat().st_mode) == 0o600
        assert load(existing) is not None


class _Proxy:
    """Stands for a module inside ``harnpool._journal``, with some functions replaced."""

    def __init__(self, module: Any, replaced: dict[str, Callable[..., Any]]) -> None:
        self._module = module
        self._replaced = replaced

    def __getattr__(self, name: str) -> Any:
        if name in self._replaced:
            return self._replaced[name]
        return getattr(self._module, name)


@contextlib.contextmanager
def _faulty(**replaced: Callable[..., Any]) -> Iterator[None]:
    """Replace ``os`` functions (or ``flock``, or the builtin ``open``) in the journal module."""
    import fcntl

    functions = {k: v for k, v in replaced.items() if k not in ("flock", "open_builtin")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_journal, "os", _Proxy(os, functions))
        if "flock" in replaced:
            patch.setattr(_journal, "fcntl", _Proxy(fcntl, {"flock": replaced["flock"]}))
        if "open_builtin" in replaced:
            patch.setattr(_journal, "open", replaced["open_builtin"], raising=False)
        yield


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class _Fault:
    """Fail the first call of one function whose argument ``matches``, with ``code``."""

    def __init__(
        self,
        function: str,
        matches: Callable[[Any, str], bool],
        code: int,
        real: Callable[..., Any],
        journal: str,
    ) -> None:
        self.function = function
        self.matches = matches
        self.code = code
        self.real = real
        self.journal = journal
        self.raised: OSError | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.raised is None and self.matches(args[0], self.journal):
            named = args[0] if isinstance(args[0], str) else None
            self.raised = OSError(self.code, os.strerror(self.code), named)
            raise self.raised
        return self.real(*args, **kwargs)


def _is(suffix: str) -> Callable[[Any, str], bool]:
    return lambda arg, journal: isinstance(arg, str) and arg == journal + suffix


def _fd_of(suffix: str) -> Callable[[Any, str], bool]:
    return lambda arg, journal: isinstance(arg, int) and _same_file(arg, journal + suffix)


def _is_directory(arg: Any, journal: str) -> bool:
    directory = os.path.dirname(journal)
    if isinstance(arg, int):
        return _same_file(arg, directory)
    return bool(arg == directory)


#: (function, which call, errno, the step named, whether the rename happened first)
_FAULTS: list[tuple[str, Callable[[Any, str], bool], int, str, bool]] = [
    ("stat", _is(""), errno.EACCES, "checking", False),
    ("stat", _is(""), errno.EIO, "checking", False),
    ("open", _is(".lock"), errno.EACCES, "locking", False),
    ("open", _is(".lock"), errno.EROFS, "locking", False),
    ("open", _is(".lock"), errno.ENOSPC, "locking", False),
    ("open", _is(".lock"), errno.EMFILE, "locking", False),
    ("flock", lambda arg, journal: True, errno.ENOLCK, "locking", False),
    ("pwrite", lambda arg, journal: True, errno.ENOSPC, "locking", False),
    ("open_builtin", _is(""), errno.EACCES, "reading", False),
    ("open_builtin", _is(""), errno.EIO, "reading", False),
    ("unlink", _is(".compact"), errno.EROFS, "writing the compacted file", False),
    ("open", _is(".compact"), errno.EACCES, "writing the compacted file", False),
    ("open", _is(".compact"), errno.EROFS, "writing the compacted file", False),
    ("open", _is(".compact"), errno.ENOSPC, "writing the compacted file", False),
    ("open", _is(".compact"), errno.EMFILE, "writing the compacted file", False),
    ("write", _fd_of(".compact"), errno.ENOSPC, "writing the compacted file", False),
    ("write", _fd_of(".compact"), errno.EIO, "writing the compacted file", False),
    ("fsync", _fd_of(".compact"), errno.EIO, "syncing the compacted file", False),
    ("fsync", _fd_of(".compact"), errno.ENOSPC, "syncing the compacted file", False),
    ("replace", _is(".compact"), errno.EACCES, "renaming", False),
    ("replace", _is(".compact"), errno.EIO, "renaming", False),
    ("open", _is_directory, errno.EMFILE, "syncing the directory", True),
    ("fsync", _is_directory, errno.EIO, "syncing the directory", True),
    ("open", _is(""), errno.EMFILE, "opening for appending", True),
]


def _real_function(name: str) -> Callable[..., Any]:
    import builtins
    import fcntl

    if name == "flock":
        return fcntl.flock
    if name == "open_builtin":
        return builtins.open
    real: Callable[..., Any] = getattr(os, name)
    return real


class TestOpenErrors:
    def test_a_missing_directory_is_enoent_and_leaves_no_files(self, tmp_path: Path) -> None:
        path = tmp_path / "missing" / "pool.jsonl"
        with pytest.raises(harnpool.JournalOpenError) as caught:
            open_journal(path, max_concurrent=1)
        error = caught.value
        assert isinstance(error, OSError)
        assert error.errno == errno.ENOENT
        assert error.strerror == os.strerror(errno.ENOENT)
        assert error.filename == f"{path}.lock"
        assert error.step == "locking"
        assert error.path == str(path)
        assert isinstance(error.__cause__, FileNotFoundError)
        assert str(path) in str(error)
        assert "locking" in str(error)
        assert _listing(tmp_path) == []

    def test_a_link_into_a_missing_directory_leaves_only_the_link(self, tmp_path: Path) -> None:
        link = tmp_path / "pool.jsonl"
        link.symlink_to(tmp_path / "missing" / "target.jsonl")
        with pytest.raises(harnpool.JournalOpenError) as caught:
            open_journal(link, max_concurrent=1)
        assert caught.value.errno == errno.ENOENT
        assert str(tmp_path / "missing" / "target.jsonl") in str(caught.value)
        assert _listing(tmp_path) == ["pool.jsonl"]

    async def test_open_pool_raises_it_as_an_oserror(self, tmp_path: Path) -> None:
        with pytest.raises(harnpool.JournalOpenError) as caught:
            async with harnpool.open_pool(tmp_path / "missing" / "pool.jsonl"):
                pytest.fail("opened a journal in a missing directory")
        assert isinstance(caught.value, OSError)
        assert caught.value.errno == errno.ENOENT

    @pytest.mark.parametrize("kind", ["directory", "pipe"])
    def test_a_file_that_is_not_regular_is_refused_before_locking(
        self, tmp_path: Path, kind: str
    ) -> None:
        path = tmp_path / "pool.jsonl"
        if kind == "directory":
            path.mkdir()
        else:
            os.mkfifo(path)
        with pytest.raises(harnpool.JournalOpenError) as caught:
            open_journal(path, max_concurrent=1)
        assert caught.value.errno == (errno.EISDIR if kind == "directory" else errno.EINVAL)
        assert caught.value.step == "checking"
        assert _listing(tmp_path) == ["pool.jsonl"]

    @pytest.mark.parametrize("journal_exists", [True, False], ids=["existing", "new"])
    @pytest.mark.parametrize(
        ("function", "matches", "code", "step", "renamed"),
        _FAULTS,
        ids=[f"{f[3]}-{f[0]}-{errno.errorcode[f[2]]}" for f in _FAULTS],
    )
    def test_every_step_raises_a_journal_open_error_with_the_errno(
        self,
        journal_path: Path,
        existing: Path,
        journal_exists: bool,
        function: str,
        matches: Callable[[Any, str], bool],
        code: int,
        step: str,
        renamed: bool,
    ) -> None:
        if not journal_exists:
            existing.unlink()
        before = existing.read_bytes() if journal_exists else None
        fault = _Fault(function, matches, code, _real_function(function), str(journal_path))
        with _faulty(**{function: fault}), pytest.raises(harnpool.JournalOpenError) as caught:
            _open_and_close(journal_path)
        error = caught.value
        assert fault.raised is not None, "the fault was never reached"
        assert isinstance(error, OSError)
        assert error.__cause__ is fault.raised
        assert (error.errno, error.strerror) == (code, os.strerror(code))
        assert error.step == step
        assert error.path == str(journal_path)
        assert error.filename is not None
        assert str(journal_path) in str(error)
        assert f"{step} " in str(error)
        # No .compact is left, and the journal holds its old contents or the new ones.
        assert set(_listing(journal_path.parent)) <= {"pool.jsonl", "pool.jsonl.lock"}
        if not renamed:
            assert (existing.read_bytes() if existing.exists() else None) == before
        # The lock was let go: the journal opens, with every task it had.
        opened = open_journal(journal_path, max_concurrent=1)
        Journal(opened).close()
        assert len(opened.tasks) == (2 if journal_exists else 0)

    @pytest.mark.parametrize(("spare", "step"), [(0, "locking"), (1, "reading")])
    def test_a_real_descriptor_limit_gives_emfile(
        self, existing: Path, spare: int, step: str
    ) -> None:
        before = existing.read_bytes()
        done = subprocess.run(
            [sys.executable, "-c", _EMFILE_CHILD, str(existing), str(spare)],
            capture_output=True,
            check=True,
            timeout=60,
        )
        outcome = json.loads(done.stdout.splitlines()[-1])
        assert outcome == {"type": "JournalOpenError", "errno": errno.EMFILE, "step": step}
        assert existing.read_bytes() == before
        assert set(_listing(existing.parent)) == {"pool.jsonl", "pool.jsonl.lock"}


#: Lower the descriptor limit, use up every descriptor but ``spare``, and open.
_EMFILE_CHILD = """
import json, os, resource, sys
import harnpool
from harnpool._journal import open_journal
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
for _ in range(int(sys.argv[2])):
    os.close(held.pop())
try:
    open_journal(sys.argv[1], max_concurrent=1)
    outcome = {"type": None}
except harnpool.JournalOpenError as exc:
    outcome = {"type": type(exc).__name__, "errno": exc.errno, "step": exc.step}
for fd in held:
    os.close(fd)
print(json.dumps(outcome))
"""


class TestWriteErrors:
    @pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
    async def test_a_failed_fsync_or_write_sets_errno(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
    ) -> None:
        def fail(*args: object) -> None:
            raise OSError(code, os.strerror(code))

        with pytest.raises(harnpool.JournalWriteError) as caught:
            async with harnpool.open_pool(journal_path) as pool:
                if code == errno.EIO:
                    monkeypatch.setattr(_journal, "_sync_data", fail)
                else:
                    monkeypatch.setattr(_journal, "_write_all", fail)
                await pool.submit(echo, 1)
        error = caught.value
        assert isinstance(error, OSError)
        assert (error.errno, error.strerror) == (code, os.strerror(code))
        assert error.filename == str(journal_path)
        assert str(journal_path) in str(error)


#: The pid of a process that has exited and been reaped.
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


#: Open and close every journal named, say so, and stay alive until stdin closes.
_RELEASING_CHILD = """
import sys
from harnpool._journal import Journal, open_journal
for path in sys.argv[1:]:
    Journal(open_journal(path, max_concurrent=1)).close()
print("released", flush=True)
sys.stdin.read()
"""


def _race(path: Path, openers: int) -> tuple[list[int | None], int]:
    """Open ``path`` from ``openers`` threads at once: the pids the losers named, and how
    many won."""
    start = threading.Barrier(openers)
    guard = threading.Lock()
    named: list[int | None] = []
    opened: list[_journal.Opened] = []

    def race() -> None:
        start.wait(timeout=30)
        try:
            o = open_journal(path, max_concurrent=1)
        except harnpool.JournalLockedError as exc:
            with guard:
                named.append(exc.pid)
        else:
            with guard:
                opened.append(o)

    threads = [threading.Thread(target=race) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # Every loser raced a holder: the winner keeps the lock until all have tried.
    for o in opened:
        Journal(o).close()
    return named, len(opened)


class TestLockHolder:
    @pytest.mark.parametrize(
        "before", ["no lock file", "a dead holder's pid", "released by a live process"]
    )
    def test_every_racing_loser_names_the_holder(self, tmp_path: Path, before: str) -> None:
        openers, rounds = 8, 15
        paths = [tmp_path / f"pool{n}.jsonl" for n in range(rounds)]
        releaser: subprocess.Popen[bytes] | None = None
        if before == "a dead holder's pid":
            dead = _dead_pid()
            for path in paths:
                path.with_name(path.name + ".lock").write_text(f"{dead}\n")
        elif before == "released by a live process":
            releaser = subprocess.Popen(
                [sys.executable, "-c", _RELEASING_CHILD, *map(str, paths)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert releaser.stdout is not None
            assert releaser.stdout.readline() == b"released\n"
        named: list[int | None] = []
        winners = 0
        for path in paths:
            losers, won = _race(path, openers)
            named += losers
            winners += won
        if releaser is not None:
            releaser.communicate(timeout=60)
        assert winners == rounds  # each round, one opener won while all the others raced it
        assert named == [os.getpid()] * (rounds * (openers - 1))

    def test_the_pid_is_cleared_when_the_lock_is_let_go(self, journal_path: Path) -> None:
        opened = open_journal(journal_path, max_concurrent=1)
        lock = journal_path.with_name(journal_path.name + ".lock")
        assert lock.read_text() == f"{os.getpid()}\n"
        Journal(opened).close()
        assert lock.read_text() == ""
