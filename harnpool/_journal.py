"""The journal file: lock, replay, compact, and append with group commit.

Durability contract: a record is durable once the batch that holds it has been
written with one ``write`` per chunk and one ``fdatasync`` of the journal, and
:meth:`Batch.wait` has returned. Nothing that waits on a batch is told anything
before that. A journal that was just created or compacted is durable once its
temporary file was fsynced, renamed over the journal, and the directory fsynced;
one that opening found already compact, once it and its directory were fsynced.
An open journal that compacts itself (see :class:`Journal`) renames its new
file over the old one and fsyncs the directory before it writes any record to
it, so what was durable in the old file is durable in the new one.

One journal has one owner, whatever the path it is opened by: the path is
resolved first (symbolic links followed), the file it names is the one locked,
read and replaced, and a file with more than one hard link is refused. Every
OSError while opening or compacting is raised as a :class:`JournalOpenError`
that names the step and keeps the errno.

Every blocking call here runs off the event loop: the opening steps run in one
worker-thread call, and every flush runs on the journal's own writer thread, so
that a pool's sync tasks cannot delay the journal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import operator
import os
import queue
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, cast

import anyio
import msgspec

from ._errors import (
    JournalCorruptError,
    JournalError,
    JournalLinkError,
    JournalLockedError,
    JournalOpenError,
    JournalVersionError,
    JournalWriteError,
    PoolClosedError,
)
from ._events import emit
from ._loop import ANYIO, Primitives, Signal, primitives
from ._loop import threadsafe_caller as _threadsafe_caller
from ._records import FINISHED, FORMAT_VERSION, Header, Record, Status, TaskRecord

__all__ = [
    "UNDECODABLE",
    "Batch",
    "Journal",
    "Opened",
    "TornTail",
    "check_format",
    "fsync_dir",
    "lines",
    "load",
    "lock",
    "open_journal",
    "recover",
    "unlock",
    "why_undecodable",
    "write_all",
]


def _sync_data(fd: int) -> None:
    """Make a file's data durable: fdatasync where there is one (Linux), else fsync."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS and the BSDs
        os.fsync(fd)


class TornTail(msgspec.Struct, frozen=True, kw_only=True):
    """The incomplete last line a crash left in a journal, skipped on load.

    Attributes:
        line: Its 1-based line number.
        offset: The byte offset where it starts.
        length: Its length in bytes.
        reason: Why it was not trusted.
    """

    line: int
    offset: int
    length: int
    reason: str


@dataclass(slots=True)
class Loaded:
    """What replaying a journal found."""

    header: Header
    #: The last record of every task, in submission order.
    tasks: dict[str, TaskRecord]
    torn: TornTail | None
    lines: int
    #: The line each task's last record was decoded from, in the order of
    #: ``tasks`` (empty if the replay kept none): compaction copies it rather
    #: than encode the record again.
    raw: list[bytes] = field(default_factory=list)
    #: The header's line as the file holds it.
    header_line: bytes = b""
    #: The file is the header and one line per task in submission order, ending
    #: with a newline: laid out as compaction writes it.
    compact: bool = False


_decoder = msgspec.json.Decoder(Record)
_by_seq = operator.attrgetter("seq")
_by_id = operator.attrgetter("id")
_by_status = operator.attrgetter("status")
_running = itertools.repeat(Status.RUNNING)
#: How much of the file the replay reads and decodes at a time.
_CHUNK = 1 << 22

# msgspec raises UnicodeDecodeError for invalid UTF-8 in a string and
# RecursionError for nesting deeper than the interpreter's recursion limit.
_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def _why(raw: bytes | memoryview, exc: BaseException) -> str:
    """Say in harnpool's own words why a line could not be decoded."""
    if isinstance(exc, RecursionError):
        return "nested too deeply to decode"
    try:
        bytes(raw).decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"invalid UTF-8 at byte {bad.start} of the line"
    if isinstance(exc, msgspec.ValidationError):
        return f"not a journal record ({exc})"
    return f"not valid JSON ({exc})"


class _Format(msgspec.Struct):
    """Just enough of a line to tell a header and its format, whatever else it holds."""

    kind: object = None
    format: object = None


_format_decoder = msgspec.json.Decoder(_Format)


def _check_format(path: str, raw: bytes | memoryview) -> None:
    """Refuse a header from a newer format before any other line is judged.

    A newer harnpool may write records (or header fields) this one cannot
    decode; the header's format, not those lines, says why the file is unreadable.

    Raises:
        JournalVersionError: ``raw`` is a header whose format is newer than this one.
    """
    try:
        peek = _format_decoder.decode(raw)
    except _UNDECODABLE:
        return  # not a header: the caller judges the line
    found = peek.format
    if (
        peek.kind == "header"
        and isinstance(found, int)
        and not isinstance(found, bool)
        and found > FORMAT_VERSION
    ):
        raise JournalVersionError(path=path, found=found, supported=FORMAT_VERSION)


def _lines(body: bytes) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(line number, byte offset, line)`` for every line of ``body``."""
    offset = 0
    number = 0
    size = len(body)
    while offset < size:
        end = body.find(b"\n", offset)
        if end < 0:
            end = size
        number += 1
        yield number, offset, body[offset:end]
        offset = end + 1


class _Irregular(Exception):
    """The streaming replay met a line it leaves to the line-by-line one to judge."""


def _replay(path: str, f: BinaryIO) -> Loaded:
    """Replay the journal open as ``f``, read from its start."""
    try:
        return _replay_stream(path, f)
    except (_Irregular, *_UNDECODABLE):
        pass
    # Something is not one well-formed record per line: read it all again and
    # judge it line by line, to accept what the format allows and name the rest.
    f.seek(0)
    return _replay_data(path, f.read())


def _replay_stream(path: str, f: BinaryIO) -> Loaded:
    """Replay a well-formed journal a chunk at a time, or raise :class:`_Irregular`.

    Every line is decoded on its own, so each holds exactly one record, and is
    fully checked, though only the last record of each task is kept, with the
    line it came from. Reading in chunks keeps the whole file out of memory.

    Raises:
        _Irregular: A line is blank, a second header or undecodable, or there
            is no complete line (msgspec's errors also mean irregular).
        JournalVersionError: The header is from a newer format.
    """
    decode = _decoder.decode
    records: dict[str, Record] = {}
    raw: dict[str, bytes] = {}
    header: Header | None = None
    header_line = b""
    # The start of a line that has not ended yet, in pieces: joined once it
    # ends, so a line longer than many chunks is not copied again at each.
    pending: list[bytes] = []
    lines = 0  # complete lines so far
    size = 0
    while chunk := f.read(_CHUNK):
        size += len(chunk)
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            pending.append(chunk)
            continue
        if pending:
            pending.append(parts[0])
            parts[0] = b"".join(pending)
        pending = [parts.pop()]
        lines += len(parts)
        if header is None:
            header_line = parts[0]
            del parts[0]
            _check_format(path, header_line)
            first = _decoder.decode(header_line)
            if not isinstance(first, Header):
                raise _Irregular
            header = first
        # A blank line fails to decode. The union, not TaskRecord alone, so
        # that a line without its "kind" is refused, as the format requires.
        decoded = list(map(decode, parts))
        try:
            ids = list(map(_by_id, decoded))
        except AttributeError:  # a second header, which has no id
            raise _Irregular from None
        # A task's records usually lie close together: find each task's last
        # line in the chunk first, so the large dicts see about one update per
        # task, not per line. Both see the same keys in the same order, so
        # their values line up.
        last = dict(zip(ids, range(len(ids)), strict=True))
        records.update(zip(last, map(decoded.__getitem__, last.values()), strict=True))
        raw.update(zip(last, map(parts.__getitem__, last.values()), strict=True))
    if header is None:
        raise _Irregular
    carry = b"".join(pending)
    torn = None
    if carry:
        torn = TornTail(
            line=lines + 1,
            offset=size - len(carry),
            length=len(carry),
            reason="the last line has no newline: a write was cut short",
        )
    # Every record kept has an id: a TaskRecord.
    tasks = cast("dict[str, TaskRecord]", records)
    return _loaded(path, header, tasks, torn, lines + bool(carry), list(raw.values()), header_line)


def _loaded(
    path: str,
    header: Header,
    records: dict[str, TaskRecord],
    torn: TornTail | None,
    lines: int,
    raw: list[bytes] | None = None,
    header_line: bytes = b"",
) -> Loaded:
    """What replay found, from each task's last record in the order tasks first
    appeared, and (if given) the lines they were read from, in the same order.

    Every record was decoded from its own line, never from a larger buffer: a
    result or arguments (``msgspec.Raw``, which points into what it was decoded
    from) keep only that line alive, and copying them would cost more memory.
    """
    if header.format > FORMAT_VERSION:
        raise JournalVersionError(path=path, found=header.format, supported=FORMAT_VERSION)
    found = list(records.values())
    seqs = list(map(_by_seq, found))
    if seqs != sorted(seqs):
        order = sorted(range(len(found)), key=seqs.__getitem__)
        found = list(map(found.__getitem__, order))
        records = dict(zip(map(_by_id, found), found, strict=True))
        if raw:
            raw = list(map(raw.__getitem__, order))
        del order
        in_order = False
    else:
        in_order = True
    del seqs
    return Loaded(
        header=header,
        tasks=records,
        torn=torn,
        lines=lines,
        raw=[] if raw is None else raw,
        header_line=header_line,
        # One line per task, in order, nothing torn, and the lines at hand to
        # copy: what compaction writes.
        compact=raw is not None and in_order and torn is None and lines == len(found) + 1,
    )


def _replay_data(path: str, data: bytes) -> Loaded:
    """Replay a whole file's bytes line by line."""
    complete = data.rfind(b"\n") + 1
    body = data[:complete]
    torn: TornTail | None = None
    if complete < len(data):
        torn = TornTail(
            line=body.count(b"\n") + 1,
            offset=complete,
            length=len(data) - complete,
            reason="the last line has no newline: a write was cut short",
        )
    newlines = body.count(b"\n")
    slow, torn = _replay_slowly(path, body, torn)
    del body
    header = slow[0]
    assert isinstance(header, Header)
    # Every record after the header is a TaskRecord: _replay_slowly checked.
    tasks = {r.id: r for r in cast("list[TaskRecord]", slow[1:])}
    del slow
    return _loaded(path, header, tasks, torn, newlines + (complete < len(data)))


def _replay_slowly(
    path: str, body: bytes, torn: TornTail | None
) -> tuple[list[Record], TornTail | None]:
    records: list[Record] = []
    lines = list(_lines(body))
    for number, offset, raw in lines:
        if not raw.strip():
            continue
        if not records:
            _check_format(path, raw)
        try:
            record = _decoder.decode(raw)
        except _UNDECODABLE as exc:
            last = number == len(lines) and torn is None
            if last and records:
                return records, TornTail(
                    line=number,
                    offset=offset,
                    length=len(raw) + 1,
                    reason=f"undecodable: {_why(raw, exc)}",
                )
            raise JournalCorruptError(
                path=path, line=number, offset=offset, reason=_why(raw, exc)
            ) from exc
        if not records and not isinstance(record, Header):
            raise JournalCorruptError(
                path=path, line=number, offset=offset, reason="the first line is not a header"
            )
        if records and isinstance(record, Header):
            raise JournalCorruptError(
                path=path, line=number, offset=offset, reason="a second header"
            )
        records.append(record)
    if not records:
        raise JournalCorruptError(
            path=path, line=1, offset=0, reason="no header: the file holds no complete line"
        )
    return records, torn


@contextlib.contextmanager
def _step(path: str, real: str, step: str, filename: str | None = None) -> Iterator[None]:
    """Raise an OSError from the block as a JournalOpenError naming the journal and ``step``."""
    try:
        yield
    except JournalError:
        raise
    except OSError as exc:
        raise JournalOpenError(
            path=path, real_path=real, step=step, cause=exc, filename=filename
        ) from exc


def _read(path: str, real: str) -> Loaded | None:
    """Read and replay the journal at ``real``; None if there is none."""
    with _step(path, real, "reading", real):
        try:
            with open(real, "rb", buffering=0) as f:
                return _replay(path, f)
        except FileNotFoundError:
            return None


def load(path: str | os.PathLike[str]) -> Loaded | None:
    """Read and replay a journal without changing it.

    Returns:
        What it holds, or None if the file does not exist.

    Raises:
        JournalCorruptError: A line other than the last cannot be decoded, or
            the header is missing or repeated. The file is not touched.
        JournalVersionError: A newer harnpool wrote the file.
        JournalOpenError: The file cannot be read (also an OSError).
    """
    path = os.fspath(path)
    return _read(path, os.path.realpath(path))


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - os.write raises rather than return 0 for files
            raise OSError(errno.EIO, "write wrote nothing")
        view = view[written:]


def _existing(path: str, real: str) -> os.stat_result | None:
    """The journal file's status, or None if there is none yet (blocking).

    Raises:
        JournalLinkError: The file has more than one hard link.
        JournalOpenError: It cannot be examined, or it is not a regular file.
    """
    with _step(path, real, "checking", real):
        try:
            status = os.stat(real)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), real)
        if not stat.S_ISREG(status.st_mode):
            # Compaction would replace a device or a pipe with a regular file.
            raise OSError(errno.EINVAL, "not a regular file", real)
    if status.st_nlink > 1:
        # Compaction replaces the file: the other names would keep the old one,
        # and an opener through another name would lock another lock file.
        raise JournalLinkError(path=path, real_path=real, links=status.st_nlink)
    return status


def _keep_owner_and_mode(fd: int, journal: os.stat_result) -> None:
    """Give the new file of a compaction the journal's owner, group and mode."""
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (journal.st_uid, journal.st_gid):
        try:
            os.fchown(fd, journal.st_uid, journal.st_gid)
        except PermissionError:
            # Only a privileged process may give a file away; a member of the
            # journal's group may still keep the group.
            with contextlib.suppress(PermissionError):
                os.fchown(fd, -1, journal.st_gid)
    # After fchown, which clears the set-id bits.
    os.fchmod(fd, stat.S_IMODE(journal.st_mode))


def _compacted_lines(header: Header, tasks: list[TaskRecord], loaded: Loaded | None) -> list[bytes]:
    """The lines of the compacted journal, each without its newline.

    A record that is the very one ``loaded`` decoded keeps the line it was
    decoded from (it decodes to the same record); any other is encoded.
    """
    encode = msgspec.json.Encoder().encode
    if loaded is None or not loaded.raw:
        return [encode(header), *map(encode, tasks)]
    found = list(loaded.tasks.values())
    raw = loaded.raw
    if len(tasks) != len(found):
        # Some were dropped: find each record's line by the record itself.
        line_of = dict(zip(map(id, found), raw, strict=True))
        del found
        return [encode(header), *[line_of.get(id(r)) or encode(r) for r in tasks]]
    lines = [encode(header), *raw]
    for i in itertools.compress(range(len(tasks)), map(operator.is_not, tasks, found)):
        lines[i + 1] = encode(tasks[i])
    return lines


#: Lines joined into one write by compaction: large writes without a copy of the whole file.
_LINES_PER_WRITE = 4096


def _create_temporary(temporary: str, journal: os.stat_result | None, flags: int = 0) -> int:
    """Make ``temporary`` afresh for writing, with the journal's owner and mode; return its fd."""
    # A crash's leftover goes first: O_EXCL then makes a file of this
    # process's own, never one (or a link) someone left in its place.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    flags |= os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o666 if journal is None else 0o600)
    try:
        if journal is not None:
            _keep_owner_and_mode(fd, journal)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_lines(fd: int, lines: list[bytes]) -> None:
    """Write ``lines``, each followed by a newline, a few thousand to a write."""
    for start in range(0, len(lines), _LINES_PER_WRITE):
        piece = lines[start : start + _LINES_PER_WRITE]
        piece.append(b"")  # the last line's newline
        _write_all(fd, b"\n".join(piece))


def compact(
    path: str,
    header: Header,
    tasks: list[TaskRecord],
    *,
    real_path: str | None = None,
    loaded: Loaded | None = None,
) -> None:
    """Replace the journal with the header and one record per task, atomically.

    ``path`` is resolved (``real_path``, if given, is what it resolved to when
    it was locked): a symbolic link stays and the file it points to is
    replaced. The new contents go to ``<real path>.compact`` first, with the
    journal's mode (and its owner and group where this process may set them;
    a new journal gets the mode the umask leaves of 0o666), are fsynced,
    renamed over the journal, and the directory is fsynced: a crash at any
    step leaves either the old journal or the new one. A leftover
    ``.compact`` file is never read; a failed compaction removes its own.
    Records that are the very ones ``loaded`` (what replaying this journal
    found) holds are written as the lines they were read from.

    Raises:
        JournalLinkError: The journal has more than one hard link; nothing was written.
        JournalOpenError: A step failed (also an OSError with its errno).
    """
    real = os.path.realpath(path) if real_path is None else real_path
    journal = _existing(path, real)
    lines = _compacted_lines(header, tasks, loaded)
    temporary = real + ".compact"
    fd = -1
    try:
        with _step(path, real, "writing the compacted file", temporary):
            fd = _create_temporary(temporary, journal)
            _write_lines(fd, lines)
            del lines
        with _step(path, real, "syncing the compacted file", temporary):
            os.fsync(fd)
            fd, closing = -1, fd
            os.close(closing)
        with _step(path, real, "renaming", temporary):
            os.replace(temporary, real)
    except BaseException:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.path.dirname(real)
    with _step(path, real, "syncing the directory", directory):
        _fsync_dir(directory)


#: How long a refused opener keeps reading the lock file for its holder's pid,
#: which the holder writes just after taking the lock.
_PID_WAIT = 0.1


def _holder(fd: int, *, alive: bool) -> int | None:
    """The pid in a lock file, if it holds a whole line (and, if ``alive``, a live process's)."""
    first, newline, _ = os.pread(fd, 32, 0).partition(b"\n")
    try:
        pid = int(first) if newline else 0
    except ValueError:
        return None
    if pid <= 0:
        return None
    if alive:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # a holder killed before it let go: the new one is about to write
        except PermissionError:
            pass  # another user's process
    return pid


def _lock(path: str, real_path: str | None = None, mode: int = 0o666) -> int:
    """Take the journal's lock, ``<real path>.lock``, and write this process's pid to it.

    Raises:
        JournalLockedError: Another holds it.
        JournalOpenError: The lock file cannot be made, locked or written.
    """
    real = os.path.realpath(path) if real_path is None else real_path
    lock_path = real + ".lock"
    with _step(path, real, "locking", lock_path):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        with _step(path, real, "locking", lock_path):
            deadline = time.monotonic() + _PID_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    late = time.monotonic() >= deadline
                    pid = _holder(fd, alive=not late)
                    if pid is not None or late:
                        raise JournalLockedError(
                            path=path, lock_path=lock_path, pid=pid, real_path=real
                        ) from None
                    # The holder has the lock but has not written its pid yet,
                    # or has just let go: look again, and try the lock again.
                    time.sleep(0.001)
            # The new pid over the old, then cut to length: never an empty
            # file while locked, so a refused opener always finds a pid.
            pid_line = f"{os.getpid()}\n".encode()
            os.pwrite(fd, pid_line, 0)
            os.ftruncate(fd, len(pid_line))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unlock(fd: int) -> None:
    # Clear the pid while still holding the lock, so the next holder's own is
    # the only one a refused opener can read; a failure here must not keep the
    # lock. The lock file stays: removing it would let a third opener lock a
    # new inode while a second still waits on the old one.
    try:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def recover(
    loaded: Loaded,
    *,
    max_concurrent: int | None = None,
    strategy: str | None = None,
    keep_finished: int | None = None,
    keep_finished_for: float | None = None,
    now: float | None = None,
) -> tuple[Header, list[TaskRecord], list[str], int]:
    """What opening writes back: the header, the tasks, the ids found ``running``,
    and how many finished tasks retention dropped.

    A task found ``running`` was interrupted by the death of the process that
    ran it: it goes back to ``queued`` with its priority, ``seq`` and attempts,
    and its ``recoveries`` count goes up by one (the pool fails a task whose
    count passes ``max_recoveries``; see :class:`harnpool.Pool`).
    Finished tasks beyond the newest ``keep_finished``, or finished more than
    ``keep_finished_for`` seconds ago, are dropped (None keeps them all). The
    submit counter never goes backwards.
    """
    tasks = list(loaded.tasks.values())
    interrupted: list[str] = []
    statuses = map(_by_status, tasks)
    for i in itertools.compress(range(len(tasks)), map(operator.is_, statuses, _running)):
        record = tasks[i]
        interrupted.append(record.id)
        tasks[i] = msgspec.structs.replace(
            record,
            status=Status.QUEUED,
            started_at=None,
            recoveries=record.recoveries + 1,
        )
    counter = max(loaded.header.submit_counter, tasks[-1].seq if tasks else 0)
    dropped = 0
    if keep_finished is not None or keep_finished_for is not None:
        finished = sorted(
            (r for r in tasks if r.status in FINISHED),
            key=lambda r: (r.finished_at or 0.0, r.seq),
            reverse=True,
        )
        keep = finished if keep_finished is None else finished[:keep_finished]
        if keep_finished_for is not None:
            cutoff = (time.time() if now is None else now) - keep_finished_for
            keep = [r for r in keep if (r.finished_at or 0.0) >= cutoff]
        kept = {r.id for r in keep}
        before = len(tasks)
        tasks = [r for r in tasks if r.status not in FINISHED or r.id in kept]
        dropped = before - len(tasks)
    header = msgspec.structs.replace(
        loaded.header,
        format=FORMAT_VERSION,
        max_concurrent=loaded.header.max_concurrent if max_concurrent is None else max_concurrent,
        strategy=loaded.header.strategy if strategy is None else strategy,
        submit_counter=counter,
    )
    return header, tasks, interrupted, dropped


def _compact_already(loaded: Loaded, header: Header, interrupted: list[str], dropped: int) -> bool:
    """True if compaction would write exactly what the journal holds."""
    return (
        loaded.compact
        and not interrupted
        and not dropped
        and loaded.header_line == msgspec.json.encode(header)
    )


def _keep(path: str, real: str) -> None:
    """Take an already compact journal as it stands, as durable as a compaction leaves it.

    Its contents may never have been synced (a copy, or a compaction whose
    directory sync a crash cut off): syncing the file and its directory costs
    next to nothing when they are, and is what compaction would have done.

    Raises:
        JournalOpenError: A step failed (also an OSError with its errno).
    """
    temporary = real + ".compact"
    # A crash's leftover, which compaction would have removed.
    with (
        _step(path, real, "writing the compacted file", temporary),
        contextlib.suppress(FileNotFoundError),
    ):
        os.unlink(temporary)
    with _step(path, real, "syncing the journal", real):
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _sync_data(fd)
        finally:
            os.close(fd)
    directory = os.path.dirname(real)
    with _step(path, real, "syncing the directory", directory):
        _fsync_dir(directory)


@dataclass(slots=True)
class Opened:
    """A journal opened for appending, and what recovery found in it."""

    #: The journal's path as given.
    path: str
    fd: int
    lock_fd: int
    header: Header
    tasks: list[TaskRecord]
    torn: TornTail | None
    created: bool
    #: The file ``path`` resolves to, which was locked, read and compacted.
    real_path: str = ""
    #: Ids of tasks found ``running``: a crash interrupted them; they are queued again.
    interrupted: list[str] = field(default_factory=list)
    #: How many finished tasks retention dropped.
    dropped: int = 0
    #: The file's size in bytes once opened.
    size: int = 0


def open_journal(
    path: str | os.PathLike[str],
    *,
    max_concurrent: int,
    strategy: str = "priority",
    keep_finished: int | None = None,
    keep_finished_for: float | None = None,
) -> Opened:
    """Lock, replay, and compact a journal, creating it if missing (blocking).

    A journal that is already what compaction would write is kept as it is,
    and only synced with its directory.

    Tasks found ``running`` are written back as ``queued`` with their priority,
    ``seq`` and attempt count, and one more recovery, since the process running
    them died. See :func:`recover` for retention. The path is resolved first:
    through a symbolic link, the file it points to is locked and compacted and
    the link stays. A new journal's lock file gets the mode the umask leaves of
    0o666; an existing journal's gets the journal's read and write bits.

    Raises:
        JournalLinkError: The journal has more than one hard link; nothing was written.
        JournalLockedError: Another pool holds the lock.
        JournalCorruptError: See :func:`load`; the file is not touched.
        JournalVersionError: See :func:`load`.
        JournalOpenError: The file, its lock or its directory cannot be read
            or written (also an OSError with the failure's errno); no
            ``.compact`` file is left, and a missing directory gets no files.
    """
    path = os.fspath(path)
    real = os.path.realpath(path)
    journal = _existing(path, real)
    mode = 0o666 if journal is None else stat.S_IMODE(journal.st_mode) & 0o666
    lock_fd = _lock(path, real, mode)
    try:
        loaded = _read(path, real)
        interrupted: list[str] = []
        tasks: list[TaskRecord] = []
        dropped = 0
        if loaded is None:
            header = Header(
                format=FORMAT_VERSION,
                pool_id=uuid.uuid4().hex,
                created_at=time.time(),
                max_concurrent=max_concurrent,
                submit_counter=0,
                strategy=strategy,
            )
        else:
            header, tasks, interrupted, dropped = recover(
                loaded,
                max_concurrent=max_concurrent,
                strategy=strategy,
                keep_finished=keep_finished,
                keep_finished_for=keep_finished_for,
            )
        torn = None if loaded is None else loaded.torn
        if loaded is not None and _compact_already(loaded, header, interrupted, dropped):
            _keep(path, real)
        else:
            compact(path, header, tasks, real_path=real, loaded=loaded)
        created = loaded is None
        del loaded  # its lines and index: the pool keeps only the records
        with _step(path, real, "opening for appending", real):
            fd = os.open(real, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
            except BaseException:
                os.close(fd)
                raise
    except BaseException:
        _unlock(lock_fd)
        raise
    return Opened(
        path=path,
        fd=fd,
        lock_fd=lock_fd,
        header=header,
        tasks=tasks,
        torn=torn,
        created=created,
        real_path=real,
        interrupted=interrupted,
        dropped=dropped,
        size=size,
    )


# -- online compaction -----------------------------------------------------------------

#: An open journal compacts itself once it holds more than this many lines after
#: its header and more of them are dead (superseded, or of tasks retention
#: dropped) than live: a small pool never compacts while open.
COMPACT_MIN_LINES = 10_000
#: ... and once its dead lines outnumber its live ones this many times over. A
#: task queued, run and finished costs two lines or three (a flush holds each
#: task's latest record only), so a pool that keeps every task may never get
#: there, rightly: its file is at most three times what compaction would leave.
COMPACT_DEAD_PER_LIVE = 1.0
#: What the writer appends while a compaction writes its file is copied over by
#: the compaction's thread until at most this many bytes are left; the writer
#: copies the rest itself, between two flushes, just before it switches files.
_CATCH_UP_LEFT = 1 << 20
#: The most a catch-up reads from the old file at a time.
_COPY_CHUNK = 1 << 20


class _Compaction:
    """One online compaction: the live records at a point of the journal, on their way to
    ``<real path>.compact``, and how much of what was appended since that file holds."""

    __slots__ = (
        "abandoned",
        "copied",
        "error",
        "fd",
        "header",
        "lines",
        "lock",
        "ready",
        "real",
        "records",
        "size",
        "source",
        "start",
        "temporary",
        "thread",
    )

    def __init__(self, real: str, header: Header, records: list[TaskRecord], start: int) -> None:
        self.real = real
        self.temporary = real + ".compact"
        self.header = header
        #: Each live task's last record when the compaction began; let go once written.
        self.records = records
        #: The journal's size when the records were taken: the catch-up copies from here.
        self.start = start
        #: How much of the journal the new file holds: it ends where a flush ended.
        self.copied = start
        self.fd = -1  # the new file, opened for appending
        self.source = -1  # the journal, read for the catch-up
        #: The new file's lines after its header, and its size in bytes.
        self.lines = 0
        self.size = 0
        self.error: OSError | None = None
        self.lock = threading.Lock()
        #: Set by the compaction's thread once it is done, whatever the outcome.
        self.ready = False
        #: Set when the pool closes first: whoever comes last removes the file.
        self.abandoned = False
        self.thread: threading.Thread | None = None

    def catch_up(self, end: int) -> None:
        """Copy the journal's bytes from where the new file ends up to ``end`` (blocking)."""
        while self.copied < end:
            data = os.pread(self.source, min(_COPY_CHUNK, end - self.copied), self.copied)
            if not data:
                raise OSError(errno.EIO, "the journal is shorter than what was written to it")
            _write_all(self.fd, data)
            self.copied += len(data)
            self.size += len(data)
            self.lines += data.count(b"\n")

    def discard(self) -> None:
        """Close both files and remove the new one (blocking)."""
        for fd in (self.fd, self.source):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.source = -1
        with contextlib.suppress(OSError):
            os.unlink(self.temporary)

    def abandon(self) -> None:
        """Give the compaction up; its file is removed once its thread is done with it."""
        with self.lock:
            self.abandoned = True
            ready = self.ready
        if ready:
            self.discard()


class _Switch:
    """A request to the writer thread: finish a compaction and write to its file from now on."""

    __slots__ = ("compaction", "done", "error", "fatal")

    def __init__(self, compaction: _Compaction) -> None:
        self.compaction = compaction
        self.done = anyio.Event()
        #: It failed before the rename: the journal is as it was, and carries on.
        self.error: OSError | None = None
        #: It failed after the rename: the journal must stop.
        self.fatal: OSError | None = None


class Batch:
    """Records that are written and synced together; await it for durability.

    A batch holds only the latest record of each task appended to it: a task
    that is queued, runs and finishes between two flushes costs one line, not
    three. Replay keeps each task's last record anyway, and whoever waited for
    a superseded record waits for this batch, so is told once the newer one is
    durable.
    """

    __slots__ = ("_done", "_error", "durable", "lines", "on_durable")

    def __init__(self, prims: Primitives = ANYIO) -> None:
        #: Each task's latest encoded record (without its newline), by task id,
        #: in the order the tasks first appeared in the batch.
        self.lines: dict[str, bytes] = {}
        self._done: Signal = prims.event()
        self._error: JournalWriteError | PoolClosedError | None = None
        #: True once every record in the batch is durable.
        self.durable = False
        #: Called in order, on the event loop, once the batch is durable (never if it fails).
        self.on_durable: list[Callable[[], object]] = []

    def _finish(self, error: JournalWriteError | PoolClosedError | None) -> None:
        """Wake the batch's waiters, and run its callbacks if it is durable.

        Raises:
            BaseException: The first exception a callback raised, once every
                callback has run (the writer then fails the journal).
        """
        self._error = error
        # Waiters first: they are woken in this order, and a submitter's next
        # record should reach the writer before the tasks the callbacks start.
        self._done.set()
        callbacks, self.on_durable = self.on_durable, []
        if error is not None or self.durable:
            return
        self.durable = True
        failure: BaseException | None = None
        for callback in callbacks:
            try:
                callback()
            except BaseException as exc:  # every callback runs, so no waiter is forgotten
                failure = failure or exc
        if failure is not None:
            raise failure

    @property
    def buf(self) -> bytes:
        """What the batch writes: one line per task."""
        lines = self.lines
        # The empty last piece ends the last line: one join, no second copy.
        return b"\n".join([*lines.values(), b""]) if lines else b""

    async def wait(self) -> None:
        """Return once every record in the batch is durable.

        Raises:
            JournalWriteError: The batch, or one before it, failed to write.
            PoolClosedError: The journal's writer stopped before the batch
                was written: it never will be.
        """
        await self._done.wait()
        if self._error is not None:
            raise self._error


class _Flush:
    """One batch handed to the writer thread, and the outcome it hands back."""

    __slots__ = ("batch", "done", "error")

    def __init__(self, batch: Batch, done: Signal) -> None:
        self.batch = batch
        self.done = done
        self.error: OSError | None = None


class Journal:
    """An open journal that appends records with group commit.

    :meth:`append` encodes a record into the pending batch at once, replacing
    the task's earlier record there if any (see :class:`Batch`); the writer
    task (:meth:`run`) hands everything pending to the journal's own thread,
    which writes it in one write and one ``fdatasync``, then wakes the batch's
    waiters. Batches are written strictly in order, one at a time, so a
    durable batch implies every earlier one is. With ``gather``, the writer
    yields to the event loop once before it takes the pending batch.

    Once dead lines outnumber live ones (see :data:`COMPACT_MIN_LINES`), the
    journal compacts itself while open: a thread of its own writes each live
    task's last record to ``<real path>.compact`` and copies what the writer
    appends meanwhile; then the writer, between two flushes, copies the last
    few appended bytes, fsyncs the new file, renames it over the journal,
    fsyncs the directory, and appends to the new file from then on. A crash at
    any point leaves the old journal or the new one, each complete.
    """

    def __init__(self, opened: Opened, *, gather: bool = False) -> None:
        self.path = opened.path
        self._gather = gather
        self._real = opened.real_path or os.path.realpath(opened.path)
        self._header = opened.header
        self._fd = opened.fd
        self._lock_fd = opened.lock_fd
        self._encode = msgspec.json.Encoder().encode
        # Made on the event loop, which chooses the events every batch uses.
        self._prims = primitives()
        self._pending = Batch(self._prims)
        self._in_flight: Batch | None = None
        self._wakeup = self._prims.event()
        self.error: JournalWriteError | None = None
        #: Called once, from the writer, when a write or fsync fails.
        self.on_failure: Callable[[JournalWriteError], None] | None = None
        #: How many flushes (each one write and one fdatasync) have completed.
        self.flushes = 0
        self._stopping = False
        #: Set once the writer has ended: nothing appended from then on is written.
        self._stopped = False
        #: Each task's last record appended, but for tasks the pool dropped:
        #: what a compaction writes.
        self._live: dict[str, TaskRecord] = {r.id: r for r in opened.tasks}
        #: The highest ``seq`` appended, for the header of a compaction.
        self._counter = opened.header.submit_counter
        # Only the writer thread changes these two, and only while the event
        # loop waits for it: the file's size and its lines after the header.
        self._size = opened.size
        self._lines = len(opened.tasks)
        self._compaction: _Compaction | None = None
        #: Compact only once the file has grown past this many lines (after a failure).
        self._compact_after = 0
        self._call_soon: Callable[[Callable[[], object]], object] | None = None
        #: How many online compactions have completed.
        self.compactions = 0

    def append(self, record: TaskRecord) -> Batch:
        """Queue ``record`` for the next flush and return the batch to await.

        After a failure, or once the writer has stopped, the returned batch is
        already failed. Never blocks.

        Raises:
            Exception: ``record`` cannot be encoded (msgspec's error); nothing
                was queued and the pending batch is as it was.
        """
        batch = self._pending
        if self.error is None and not self._stopped:
            # Encoded before the batch changes: a record that fails leaves it as it was.
            batch.lines[record.id] = self._encode(record)
            self._live[record.id] = record
            if record.seq > self._counter:
                self._counter = record.seq
            self._wakeup.set()
        return batch

    def forget(self, task_id: str) -> None:
        """Leave the task out of the next compaction: the pool dropped it (retention)."""
        self._live.pop(task_id, None)

    def _write(self, data: bytes, lines: int) -> None:
        _write_all(self._fd, data)
        _sync_data(self._fd)
        self._size += len(data)
        self._lines += lines

    async def run(self) -> None:
        """Flush batches until :meth:`stop` is called or a write fails.

        The writer is shielded from cancellation: a cancelled pool still has
        records to flush on its way out, and a write in progress always
        finishes, so its waiters learn the truth. Call :meth:`stop` to end it.

        The blocking write and fdatasync run on a long-lived thread of the
        journal's own, which hands each outcome back with a thread-safe call:
        much cheaper per flush than a fresh worker-thread call each time.
        """
        with anyio.CancelScope(shield=True):
            requests: queue.SimpleQueue[_Flush | _Switch | None] = queue.SimpleQueue()
            self._call_soon = _threadsafe_caller()
            thread = threading.Thread(
                target=self._writer_thread,
                args=(requests, self._call_soon),
                name=f"harnpool-journal {self.path}",
                daemon=True,
            )
            thread.start()
            try:
                while True:
                    if not self._wakeup.is_set():
                        await self._wakeup.wait()
                    # By default no extra yield before taking the batch: whatever
                    # appends while this one is written rides with the next, so the
                    # work of the tasks woken now overlaps the fdatasync instead of
                    # preceding it. Gathering yields once: a task started eagerly on
                    # the record just appended runs first, and its own records join
                    # the batch (one line for all of them, see Batch).
                    if self._gather:
                        await self._prims.checkpoint()
                    self._wakeup = self._prims.event()
                    if self._pending.lines and not await self._write_pending(requests):
                        return
                    if self._stopping:
                        return
                    if not await self._compact(requests):
                        return
            finally:
                requests.put(None)
                self._stopped = True
                if self.error is None:
                    # Appended after the last flush, or while the writer was
                    # being stopped: it will never be written, so say so now
                    # rather than leave its waiters hanging.
                    self._pending._finish(
                        PoolClosedError(
                            f"the pool on {self.path!r} closed before a record was written: "
                            "it is not durable; the journal holds the state before it"
                        )
                    )

    async def _compact(self, requests: queue.SimpleQueue[_Flush | _Switch | None]) -> bool:
        """Between two flushes: start a compaction that is due, or finish one whose file
        is written; False if finishing it failed the journal."""
        compaction = self._compaction
        if compaction is None:
            lines, live = self._lines, len(self._live)
            dead = lines - live
            if (
                lines > COMPACT_MIN_LINES
                and lines > self._compact_after
                and (dead > COMPACT_DEAD_PER_LIVE * live)
            ):
                self._start_compaction()
            return True
        if not compaction.ready:
            return True
        self._compaction = None
        lines = self._lines
        if compaction.error is None:
            switch = _Switch(compaction)
            requests.put(switch)
            await switch.done.wait()
            if switch.fatal is not None:
                self._fail(self._pending, switch.fatal)
                return False
            if switch.error is None:
                self.compactions += 1
                self._compact_after = 0
                emit("info", "journal.compacted", pool=self.path, lines=lines, kept=self._lines)
                return True
            compaction.error = switch.error
        # The journal is as it was: try again once it has doubled.
        self._compact_after = 2 * lines
        emit(
            "warning",
            "journal.compaction_failed",
            pool=self.path,
            error=str(compaction.error),
            retry_after_lines=self._compact_after,
        )
        return True

    def _start_compaction(self) -> None:
        """Take the live records and the file's size, now that no flush is under way, and
        write them to a new file on a thread of the compaction's own."""
        header = msgspec.structs.replace(self._header, submit_counter=self._counter)
        compaction = _Compaction(self._real, header, list(self._live.values()), self._size)
        assert self._call_soon is not None
        compaction.thread = threading.Thread(
            target=self._compaction_thread,
            args=(compaction, self._call_soon),
            name=f"harnpool-compaction {self.path}",
            daemon=True,
        )
        self._compaction = compaction
        compaction.thread.start()

    def _compaction_thread(
        self, compaction: _Compaction, call_soon: Callable[[Callable[[], object]], object]
    ) -> None:
        try:
            compaction.source = os.open(compaction.real, os.O_RDONLY | os.O_CLOEXEC)
            compaction.fd = _create_temporary(
                compaction.temporary, os.fstat(compaction.source), os.O_APPEND
            )
            encode = msgspec.json.Encoder().encode
            records, compaction.records = compaction.records, []
            first = encode(compaction.header) + b"\n"
            _write_all(compaction.fd, first)
            compaction.size = len(first)
            for start in range(0, len(records), _LINES_PER_WRITE):
                if compaction.abandoned:
                    break
                piece = list(map(encode, records[start : start + _LINES_PER_WRITE]))
                piece.append(b"")  # the last line's newline
                data = b"\n".join(piece)
                _write_all(compaction.fd, data)
                compaction.size += len(data)
            compaction.lines = len(records)
            del records
            # What the writer appended meanwhile, all but the last of it, so the
            # writer's own part of the catch-up holds up no flush for long.
            while not compaction.abandoned and self._size - compaction.copied > _CATCH_UP_LEFT:
                compaction.catch_up(self._size)
            _sync_data(compaction.fd)
        except OSError as exc:
            compaction.error = exc
        except BaseException as exc:  # pragma: no cover - a bug: give this compaction up
            compaction.error = OSError(errno.EIO, f"the compaction failed: {exc!r}")
        if compaction.error is not None:
            compaction.discard()
        with compaction.lock:
            compaction.ready = True
            abandoned = compaction.abandoned
        if abandoned:
            compaction.discard()
            return
        with contextlib.suppress(RuntimeError):  # the event loop is gone: close() discards it
            call_soon(self._wakeup_writer)

    def _wakeup_writer(self) -> None:
        self._wakeup.set()

    def _switch(self, switch: _Switch) -> None:
        """On the writer thread, between two flushes: copy what is left, make the new file
        the journal, and write to it from now on."""
        compaction = switch.compaction
        try:
            compaction.catch_up(self._size)
            os.fsync(compaction.fd)
            os.replace(compaction.temporary, compaction.real)
        except OSError as exc:
            switch.error = exc
            compaction.discard()
            return
        # The journal's path names the new file now: from here on the old
        # descriptor writes to a file nobody will read.
        old, self._fd = self._fd, compaction.fd
        compaction.fd = -1
        self._size, self._lines = compaction.size, compaction.lines
        for fd in (old, compaction.source):
            with contextlib.suppress(OSError):
                os.close(fd)
        compaction.source = -1
        try:
            # Before anything is acknowledged from the new file: a crash must not
            # bring back the old one without it.
            _fsync_dir(os.path.dirname(compaction.real))
        except OSError as exc:
            switch.fatal = exc

    async def _write_pending(self, requests: queue.SimpleQueue[_Flush | _Switch | None]) -> bool:
        """Write and sync the pending batch; False if that failed."""
        batch = self._pending
        self._pending = Batch(self._prims)
        self._in_flight = batch
        flush = _Flush(batch, self._prims.event())
        requests.put(flush)
        try:
            await flush.done.wait()
        except BaseException as exc:
            # Whatever else ends the writer (a bug, an interrupt) leaves the batch's
            # fate unknown: fail it, so no waiter hangs or hears "durable".
            self._fail(batch, exc)
            raise
        return self.error is None

    def _writer_thread(
        self,
        requests: queue.SimpleQueue[_Flush | _Switch | None],
        call_soon: Callable[[Callable[[], object]], object],
    ) -> None:
        while (flush := requests.get()) is not None:
            if isinstance(flush, _Switch):
                # Online compaction: the file changes between two flushes, never during one.
                try:
                    self._switch(flush)
                except BaseException as exc:  # pragma: no cover - a bug: stop, rather than hang
                    flush.fatal = OSError(errno.EIO, f"the journal writer failed: {exc!r}")
                try:
                    call_soon(flush.done.set)
                except RuntimeError:  # pragma: no cover - the event loop is gone: nobody waits
                    return
                if flush.fatal is not None:
                    return  # fail-stop, as after a failed write
                continue
            try:
                # Joined here, off the event loop: nothing appends to a batch once handed over.
                batch = flush.batch
                self._write(batch.buf, len(batch.lines))
            except OSError as exc:
                flush.error = exc
            except BaseException as exc:  # pragma: no cover - a bug: report it as a failure
                flush.error = OSError(errno.EIO, f"the journal writer failed: {exc!r}")
            try:
                call_soon(functools.partial(self._flushed, flush))
            except RuntimeError:  # pragma: no cover - the event loop is gone: nobody waits
                return
            if flush.error is not None:
                return  # fail-stop: nothing is written after a failure

    def _flushed(self, flush: _Flush) -> None:
        """On the event loop: settle a batch the writer thread is done with.

        Runs as a callback of the event loop, where an exception would be lost
        (asyncio) or end the run (trio), and ``done`` must be set or the writer
        waits forever: whatever goes wrong here fails the journal instead.
        """
        try:
            if self.error is not None:
                pass  # already failed (the writer was interrupted): never announce durability
            elif flush.error is not None:
                self._fail(flush.batch, flush.error)
            else:
                self.flushes += 1
                self._in_flight = None
                flush.batch._finish(None)
        except BaseException as exc:
            # A callback of a durable batch raised: what the pool holds in
            # memory no longer follows the journal, so stop it.
            self._fail(flush.batch, exc)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and the like still end the program
        finally:
            flush.done.set()

    def stop(self) -> None:
        """Let :meth:`run` return once it has flushed what is pending."""
        self._stopping = True
        self._wakeup.set()

    def _fail(self, batch: Batch, exc: BaseException) -> None:
        if self.error is not None:
            # Failed already (a callback of the failure raised): just settle the batch.
            batch._finish(self.error)
            return
        if isinstance(exc, OSError):
            what = f"writing journal {self.path!r} failed ({exc})"
        else:
            what = f"the writer of journal {self.path!r} failed ({type(exc).__qualname__}: {exc})"
        error = JournalWriteError(
            f"{what}; the pool has stopped and acknowledged nothing after the failure: "
            "reopen the journal to recover",
            path=self.path,
            cause=exc,
        )
        error.__cause__ = exc
        self.error = error
        batch._finish(error)
        self._pending._finish(error)
        if self.on_failure is not None:
            self.on_failure(error)

    async def flush(self) -> None:
        """Wait until every record appended so far is durable.

        Raises:
            JournalWriteError: The journal failed.
        """
        if self._pending.lines or self.error is not None:
            await self._pending.wait()
        elif self._in_flight is not None:
            await self._in_flight.wait()

    def close(self) -> None:
        """Close the file and release the lock (blocking)."""
        compaction, self._compaction = self._compaction, None
        if compaction is not None:
            compaction.abandon()
            # Its file is removed before the lock is let go: once another
            # process holds it, ``<real path>.compact`` is that process's.
            if compaction.thread is not None:
                compaction.thread.join()
        try:
            os.close(self._fd)
        finally:
            _unlock(self._lock_fd)


# -- for the command-line tool ---------------------------------------------------------
# Public within the package: what the harnpool command reads a journal with line by
# line (salvage keeps every decodable line), and the file steps its writing commands
# take under the journal's lock. Reading a whole journal is :func:`load`.

#: The exceptions a line that does not decode raises.
UNDECODABLE = _UNDECODABLE
#: ``lines(body)``: each line of a journal's bytes as (1-based number, byte offset, bytes).
lines = _lines
#: ``why_undecodable(raw, exc)``: why a line did not decode, in harnpool's words.
why_undecodable = _why
#: ``check_format(path, raw)``: raise JournalVersionError if an undecodable header is newer.
check_format = _check_format
#: ``lock(path)``: take a journal's lock, or raise JournalLockedError; returns the fd.
lock = _lock
#: ``unlock(fd)``: give a lock taken with :func:`lock` back.
unlock = _unlock
#: ``fsync_dir(directory)``: make a rename or link in ``directory`` durable.
fsync_dir = _fsync_dir
#: ``write_all(fd, data)``: write all of ``data``, however many writes it takes.
write_all = _write_all
