"""The command-line tool: ``python -m harnpool`` or ``harnpool``.

``inspect`` and ``verify`` read a snapshot of the journal and never write, so
they work while a pool has it open. ``compact``, ``salvage``, ``cancel``,
``fail`` and ``requeue`` take the journal's lock, as a pool does, and refuse
while anyone else holds it.

``inspect`` and ``verify`` also read a pool stored in PostgreSQL, given a DSN
as ``open_pool`` takes it and ``--name``; the other commands refuse a DSN.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import fnmatch
import os
import stat
import sys
import time
import unicodedata
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import msgspec

from . import __version__
from ._errors import (
    DatabaseError,
    JournalCorruptError,
    JournalLinkError,
    JournalLockedError,
    JournalOpenError,
    JournalVersionError,
    SchemaVersionError,
)
from ._journal import (
    UNDECODABLE,
    Loaded,
    TornTail,
    check_format,
    compact,
    fsync_dir,
    lines,
    load,
    lock,
    recover,
    unlock,
    why_undecodable,
    write_all,
)
from ._records import FINISHED, FORMAT_VERSION, Header, Record, Status, TaskRecord
from ._settings import is_dsn

__all__ = ["main"]

EXIT_OK = 0
EXIT_TORN = 1
EXIT_UNREADABLE = 2
EXIT_LOCKED = 3
EXIT_REFUSED = 4
EXIT_OS_ERROR = 5
EXIT_UNKNOWN_TASK = 6
EXIT_UNREACHABLE = 7
EXIT_USAGE = 64
EXIT_INTERNAL = 70

_EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}   success
  {EXIT_TORN}   verify: the journal ends in a torn line (a write cut short); the rest is sound
  {EXIT_UNREADABLE}   the journal is missing, corrupt, or written by a newer harnpool;
      salvage: no line of it could be kept;
      on a database: it has no such pool, a row does not decode as a task,
      or its schema is newer than this harnpool's
  {EXIT_LOCKED}   compact, salvage, cancel, fail, requeue: another process holds the journal's lock
  {EXIT_REFUSED}   salvage: the output exists (use --force) or is the journal itself;
      compact, salvage, cancel, fail, requeue: given a database, not a journal;
      cancel, fail, requeue: a task is not in a status the command applies to;
      compact, cancel, fail, requeue: the journal has more than one hard link
  {EXIT_OS_ERROR}   a file could not be read or written, or the path is not a file
  {EXIT_UNKNOWN_TASK}   cancel, fail, requeue: the journal has no task with a given id
  {EXIT_UNREACHABLE}   inspect, verify: the database cannot be reached or failed a query,
      or psycopg is not installed (harnpool[postgres])
  {EXIT_USAGE}  the command line is wrong
  {EXIT_INTERNAL}  an unexpected error: a bug in harnpool

cancel, fail and requeue change nothing unless every id given can be changed.
"""

#: The ``error_type`` of a task failed with ``harnpool fail``.
OPERATOR_ERROR_TYPE = "harnpool.operator"


class _Failure(Exception):
    """A refusal or error to report in one line, with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _missing(path: str) -> _Failure:
    return _Failure(f"journal {path!r} does not exist", EXIT_UNREADABLE)


def _check_journal(path: str) -> None:
    """Refuse a path that is not an existing regular file, before locking creates ``.lock``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise _missing(path) from None
    if stat.S_ISDIR(mode):
        raise _Failure(f"journal {path!r} is a directory, not a journal file", EXIT_OS_ERROR)
    if not stat.S_ISREG(mode):
        raise _Failure(f"journal {path!r} is not a regular file", EXIT_OS_ERROR)


def _load(path: str) -> Loaded:
    loaded = load(path)
    if loaded is None:
        raise _missing(path)
    return loaded


def _describe_torn(torn: TornTail) -> str:
    return (
        f"torn tail at line {torn.line} (byte offset {torn.offset}, {torn.length} bytes): "
        f"{torn.reason}"
    )


def _counts(tasks: Sequence[TaskRecord]) -> str:
    counts = Counter(record.status for record in tasks)
    parts = [f"{status.value} {counts[status]}" for status in Status if counts[status]]
    noun = "task" if len(tasks) == 1 else "tasks"
    return f"{len(tasks)} {noun}" + (f" ({', '.join(parts)})" if parts else "")


# -- inspect ---------------------------------------------------------------------------


class _Row(msgspec.Struct, kw_only=True):
    """One task as ``inspect --json`` prints it; the field names are stable."""

    id: str
    key: str | None
    priority: int
    seq: int
    status: Status
    function: str | None
    attempts: int
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    error_type: str | None
    error_message: str | None
    #: The task's result as stored (any JSON value), or null unless completed.
    result: msgspec.Raw | None


def _row(record: TaskRecord) -> _Row:
    return _Row(
        id=record.id,
        key=record.key,
        priority=record.priority,
        seq=record.seq,
        status=record.status,
        function=record.function,
        attempts=record.attempts,
        submitted_at=record.submitted_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        error_type=record.error_type,
        error_message=record.error_message,
        result=None if isinstance(record.result, msgspec.UnsetType) else record.result,
    )


def _when(timestamp: float | None, since: float | None = None) -> str:
    """Local time; only the time of day if it falls on the same day as ``since``."""
    if timestamp is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp)
    if since is not None and moment.date() == datetime.datetime.fromtimestamp(since).date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


_ERROR_WIDTH = 72

# Control characters (Cc), invisible formatting such as bidi overrides (Cf), and
# line or paragraph separators would break a row or drive the terminal.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp"})
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _printable(text: str) -> str:
    """``text`` with every character that is not safe in a terminal table escaped."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if unicodedata.category(char) not in _UNPRINTABLE:
            out.append(char)
        elif char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
    return "".join(out)


def _error_text(record: TaskRecord) -> str:
    if record.error_type is None and record.error_message is None:
        return ""
    kind = (record.error_type or "").removeprefix("builtins.")
    text = _printable(" ".join(f"{kind}: {record.error_message or ''}".split()))
    if len(text) > _ERROR_WIDTH:
        text = text[: _ERROR_WIDTH - 1] + "…"
    return text


def _table(records: Sequence[TaskRecord]) -> str:
    header = ("ID", "KEY", "PRIORITY", "STATUS", "ATTEMPTS", "SUBMITTED", "STARTED", "FINISHED")
    rows = [
        (
            _printable(r.id),
            "-" if r.key is None else _printable(r.key),
            str(r.priority),
            r.status.value,
            str(r.attempts),
            _when(r.submitted_at),
            _when(r.started_at, r.submitted_at),
            _when(r.finished_at, r.submitted_at),
            _error_text(r),
        )
        for r in records
    ]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
    numeric = {2, 4}

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=False))
        ]
        return "  ".join([*padded, *cells[len(widths) :]]).rstrip()

    return "\n".join([line((*header, "ERROR")), *(line(row) for row in rows)])


def _inspect(args: argparse.Namespace) -> int:
    path: str = args.journal
    if is_dsn(path):
        found = _read_pool(args)
        for problem in found.problems:
            print(f"harnpool: {found.where}: {problem}", file=sys.stderr)
        return _show(found.tasks, args, holder="the pool")
    loaded = _load(path)
    if loaded.torn is not None:
        print(f"harnpool: journal {path!r}: {_describe_torn(loaded.torn)}", file=sys.stderr)
    return _show(list(loaded.tasks.values()), args, holder="the journal")


def _show(tasks: Sequence[TaskRecord], args: argparse.Namespace, *, holder: str) -> int:
    statuses = {Status(value) for value in args.status or ()}
    records = [
        r
        for r in tasks
        if (not statuses or r.status in statuses)
        and (args.key is None or (r.key is not None and fnmatch.fnmatchcase(r.key, args.key)))
    ]
    if args.json:
        encoded = [msgspec.json.encode(_row(r)).decode() for r in records]
        print("[\n" + ",\n".join(encoded) + "\n]" if encoded else "[]")
        return EXIT_OK
    if not records:
        print(f"no tasks match ({holder} holds {len(tasks)})")
        return EXIT_OK
    print(_table(records))
    shown = f"{len(records)} of {len(tasks)}" if statuses or args.key else "all"
    print(f"\n{shown} tasks shown; times are local")
    return EXIT_OK


# -- a pool in PostgreSQL --------------------------------------------------------------


def _redacted(dsn: str) -> str:
    """``dsn`` without its password, to print."""
    parts = urllib.parse.urlsplit(dsn)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = urllib.parse.urlencode(
        [
            (k, "***" if k == "password" else v)
            for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ]
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _not_json(record: TaskRecord) -> list[str]:
    """Why ``record``'s stored arguments or result would not decode, if they would not."""
    problems = []
    for field_name in ("args", "result"):
        value = getattr(record, field_name)
        if isinstance(value, msgspec.Raw):
            try:
                msgspec.json.decode(value)
            except msgspec.DecodeError:
                problems.append(f"task {_named(record)}: its stored {field_name} is not valid JSON")
    return problems


@dataclass(slots=True)
class _Found:
    """A pool's tasks as read from the database, and what did not decode."""

    where: str
    version: int
    #: Undecodable results are left out (as if none were stored), so --json stays JSON.
    tasks: list[TaskRecord]
    problems: list[str]


def _read_pool(args: argparse.Namespace) -> _Found:
    """Read the pool ``--name`` of the database ``args.journal``, changing nothing."""
    dsn: str = args.journal
    name: str = args.name
    where = f"pool {name!r} in {_redacted(dsn)!r}"
    try:
        from ._pg import SCHEMA_VERSION, PostgresStore
    except ImportError as exc:
        raise _Failure(
            f"reading a pool on PostgreSQL needs psycopg ({exc.name}): install harnpool[postgres]",
            EXIT_UNREACHABLE,
        ) from None
    with PostgresStore.connect(dsn, name, connections=1) as store:
        version = store.schema_version()
        if version == 0:
            raise _Failure(f"{where}: the database has no harnpool schema", EXIT_UNREADABLE)
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(pool=name, found=version, supported=SCHEMA_VERSION)
        if not store.registered():
            raise _Failure(f"{where}: the database has no pool of that name", EXIT_UNREADABLE)
        tasks = store.tasks()
    problems: list[str] = []
    for index, record in enumerate(tasks):
        if found := _not_json(record):
            problems.extend(found)
            if not isinstance(record.result, msgspec.UnsetType):
                tasks[index] = msgspec.structs.replace(record, result=msgspec.UNSET)
    return _Found(where=where, version=version, tasks=tasks, problems=problems)


def _journal_only(path: str, command: str) -> None:
    if is_dsn(path):
        raise _Failure(
            f"{command} works on a journal file; {_redacted(path)!r} is a PostgreSQL "
            "database, which only inspect and verify read",
            EXIT_REFUSED,
        )


# -- verify ----------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    path: str = args.journal
    if is_dsn(path):
        found = _read_pool(args)
        summary = f"schema version {found.version}, {_counts(found.tasks)}"
        if not found.problems:
            print(f"{found.where}: ok: {summary}")
            return EXIT_OK
        for problem in found.problems:
            print(f"{found.where}: {problem}")
        print(f"{found.where}: corrupt: {len(found.problems)} undecodable values; {summary}")
        return EXIT_UNREADABLE
    loaded = _load(path)
    tasks = list(loaded.tasks.values())
    summary = f"format {loaded.header.format}, {_counts(tasks)}, {loaded.lines} lines"
    if loaded.torn is None:
        print(f"{path}: ok: {summary}")
        return EXIT_OK
    torn = loaded.torn
    print(
        f"{path}: torn tail: line {torn.line}, byte offset {torn.offset}, "
        f"{torn.length} bytes ({torn.reason})"
    )
    print(f"{path}: the rest is sound: {summary}; the next open or compact drops the torn tail")
    return EXIT_TORN


# -- compact ---------------------------------------------------------------------------


def _compact(args: argparse.Namespace) -> int:
    path: str = args.journal
    _journal_only(path, args.command)
    _check_journal(path)  # before locking, which would leave a lock file behind
    lock_fd = lock(path)
    try:
        before = os.stat(path).st_size
        loaded = _load(path)
        header, tasks, requeued, _ = recover(loaded)
        compact(path, header, tasks, loaded=loaded)
        after = os.stat(path).st_size
    finally:
        unlock(lock_fd)
    print(
        f"compacted {path}: {before} -> {after} bytes, {loaded.lines} -> {len(tasks) + 1} lines; "
        f"{_counts(tasks)}"
    )
    if requeued:
        print(f"queued again (they were running when their process stopped): {', '.join(requeued)}")
    if loaded.torn is not None:
        print(f"dropped the {_describe_torn(loaded.torn)}")
    return EXIT_OK


# -- salvage ---------------------------------------------------------------------------

_decoder = msgspec.json.Decoder(Record)


@dataclass(slots=True)
class _Dropped:
    line: int
    offset: int
    length: int
    reason: str


@dataclass(slots=True)
class _Salvage:
    """The decodable records of a journal, read line by line."""

    header: Header | None = None
    header_line: bytes = b""
    #: Task records' lines, unchanged, in file order.
    records: list[bytes] = field(default_factory=list)
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    dropped: list[_Dropped] = field(default_factory=list)
    lines: int = 0


def _read_salvageable(path: str, data: bytes) -> _Salvage:
    found = _Salvage()
    for number, offset, raw in lines(data):
        found.lines = number
        if not raw.strip():
            continue
        end = offset + len(raw)
        length = len(raw) + (end < len(data))
        try:
            record = _decoder.decode(raw)
        except UNDECODABLE as exc:
            if found.header is None:
                # A newer format's header may not decode here; its format still speaks for the file.
                check_format(path, raw)
            found.dropped.append(
                _Dropped(number, offset, length, f"undecodable: {why_undecodable(raw, exc)}")
            )
            continue
        if isinstance(record, Header):
            if found.header is not None:
                found.dropped.append(_Dropped(number, offset, length, "a second header"))
                continue
            if record.format > FORMAT_VERSION:
                raise JournalVersionError(path=path, found=record.format, supported=FORMAT_VERSION)
            found.header = record
            found.header_line = raw
        else:
            found.records.append(raw)
            found.tasks[record.id] = record
    return found


def _synthesise_header(found: _Salvage) -> Header:
    tasks = found.tasks.values()
    return Header(
        format=FORMAT_VERSION,
        pool_id=uuid.uuid4().hex,
        created_at=min((t.submitted_at for t in tasks), default=time.time()),
        max_concurrent=1,
        # New tasks must not reuse the ids ("t<seq>") of the ones kept.
        submit_counter=max((t.seq for t in tasks), default=0),
    )


def _write_new_file(output: str, data: bytes, *, replace: bool) -> None:
    """Write ``data`` to ``output`` durably; never clobber it unless ``replace``."""
    temporary = f"{output}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temporary, output)
        else:
            # link() refuses an existing name atomically, unlike rename().
            try:
                os.link(temporary, output)
            except FileExistsError:
                raise _Failure(
                    f"output {output!r} exists; pass --force to replace it", EXIT_REFUSED
                ) from None
            os.unlink(temporary)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(output)))


def _salvage(args: argparse.Namespace) -> int:
    path: str = args.journal
    output: str = args.output
    _journal_only(path, args.command)
    _check_journal(path)
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise _Failure(
            f"output {output!r}: its directory {directory!r} does not exist", EXIT_OS_ERROR
        )
    if os.path.lexists(output):
        same = os.path.realpath(output) == os.path.realpath(path)
        if same or (os.path.exists(output) and os.path.samefile(output, path)):
            raise _Failure(
                f"output {output!r} is the journal itself; salvage never edits the original",
                EXIT_REFUSED,
            )
        if not args.force:
            raise _Failure(f"output {output!r} exists; pass --force to replace it", EXIT_REFUSED)
        if os.path.isdir(output):
            raise _Failure(f"output {output!r} is a directory", EXIT_REFUSED)
    lock_fds = [lock(path)]
    try:
        if args.force and os.path.lexists(output):
            lock_fds.append(lock(output))  # a pool may have the file we would replace open
        with open(path, "rb") as f:
            data = f.read()
        found = _read_salvageable(path, data)
        if found.header is None and not found.records:
            raise _Failure(
                f"nothing to salvage in {path!r}: none of its {found.lines} lines is a "
                f"decodable header or task record; wrote nothing",
                EXIT_UNREADABLE,
            )
        header_line = found.header_line
        if found.header is None:
            header_line = msgspec.json.encode(_synthesise_header(found))
        body = b"".join(line + b"\n" for line in [header_line, *found.records])
        _write_new_file(output, body, replace=args.force)
    finally:
        for fd in reversed(lock_fds):
            unlock(fd)
    check = _load(output)  # the promise: a pool can open what was written
    print(
        f"salvaged {path} -> {output}: kept {len(found.records) + (found.header is not None)} "
        f"of {found.lines} lines, {_counts(list(check.tasks.values()))}"
    )
    if found.header is None:
        print(
            f"no decodable header: wrote a new one (pool id {check.header.pool_id}, "
            f"submit counter {check.header.submit_counter})"
        )
    if not found.dropped:
        print("dropped nothing")
    for d in found.dropped:
        print(f"dropped line {d.line} (byte offset {d.offset}, {d.length} bytes): {d.reason}")
    print(f"the original was not changed; check the tasks with: harnpool inspect {output}")
    return EXIT_OK


# -- cancel, fail, requeue -------------------------------------------------------------


def _named(record: TaskRecord) -> str:
    key = "" if record.key is None else f" (key {_printable(record.key)!r})"
    return f"{_printable(record.id)}{key}"


def _with_reason(text: str, reason: str | None) -> str:
    return text if reason is None else f"{text}: {reason}"


def _refuse_finished(record: TaskRecord) -> str | None:
    if record.status in FINISHED:
        return f"task {_named(record)} has already {record.status.value}"
    return None


def _refuse_requeue(record: TaskRecord) -> str | None:
    if record.status is Status.QUEUED:
        return f"task {_named(record)} is already queued"
    if record.name is None and record.key is None:
        return (
            f"task {_named(record)} has no key and no registered function: "
            "nothing could run it again"
        )
    if record.name is not None and isinstance(record.args, msgspec.UnsetType):
        return (
            f"task {_named(record)} completed, which dropped its arguments: "
            "it cannot run again; submit a new task instead"
        )
    return None


def _cancelled(record: TaskRecord, now: float, reason: str | None) -> TaskRecord:
    # As Pool.cancel writes it, with a reason that says who did it.
    return msgspec.structs.replace(
        record,
        status=Status.CANCELLED,
        finished_at=now,
        reason=_with_reason("cancelled by operator", reason),
    )


def _failed(record: TaskRecord, now: float, reason: str | None) -> TaskRecord:
    # As a final failed attempt is written; wait() raises TaskFailed with these.
    return msgspec.structs.replace(
        record,
        status=Status.FAILED,
        finished_at=now,
        error_type=OPERATOR_ERROR_TYPE,
        error_message=_with_reason("failed by operator", reason),
    )


def _requeued(record: TaskRecord, now: float, reason: str | None) -> TaskRecord:
    # Same id, key, priority and seq: it keeps its place; attempts and crash
    # recoveries start again at 0, so its retries and max_recoveries apply anew
    # (a task failed as a crash loop would otherwise be failed again on open).
    return msgspec.structs.replace(
        record,
        status=Status.QUEUED,
        started_at=None,
        finished_at=None,
        attempts=0,
        recoveries=0,
        result=msgspec.UNSET,
        error_type=None,
        error_message=None,
        not_before=None,
        reason=None,
    )


@dataclass(frozen=True, slots=True)
class _Operation:
    verb: str
    refuse: Callable[[TaskRecord], str | None]
    change: Callable[[TaskRecord, float, str | None], TaskRecord]


_OPERATIONS = {
    "cancel": _Operation("cancelled", _refuse_finished, _cancelled),
    "fail": _Operation("failed", _refuse_finished, _failed),
    "requeue": _Operation("queued", _refuse_requeue, _requeued),
}


def _how_it_runs(record: TaskRecord) -> str:
    if record.name is not None:
        return f"resumes when a pool opens the journal (registered as {record.name!r})"
    assert record.key is not None  # refused otherwise
    return f"runs once its function is submitted again with key {_printable(record.key)!r}"


def _operate(args: argparse.Namespace) -> int:
    """Record an operator's transition of some tasks: all of them, or none."""
    path: str = args.journal
    operation = _OPERATIONS[args.command]
    ids: list[str] = list(dict.fromkeys(args.ids))
    reason: str | None = getattr(args, "reason", None)
    _journal_only(path, args.command)
    _check_journal(path)  # before locking, which would leave a lock file behind
    lock_fd = lock(path)
    try:
        loaded = _load(path)
        unknown = [i for i in ids if i not in loaded.tasks]
        if unknown:
            names = ", ".join(repr(_printable(i)) for i in unknown)
            noun = "id" if len(unknown) == 1 else "ids"
            raise _Failure(
                f"journal {path!r} has no task with {noun} {names}; nothing was written",
                EXIT_UNKNOWN_TASK,
            )
        before = {i: loaded.tasks[i] for i in ids}
        refusals = [why for record in before.values() if (why := operation.refuse(record))]
        if refusals:
            raise _Failure(
                f"{args.command} refused in {path!r}: {'; '.join(refusals)}; nothing was written",
                EXIT_REFUSED,
            )
        # What opening a pool would write back, with the operator's records in
        # place: one atomic rewrite, so every id changes or none does.
        header, tasks, interrupted, _ = recover(loaded)
        now = time.time()
        after: dict[str, TaskRecord] = {}
        for index, record in enumerate(tasks):
            if record.id in before:
                tasks[index] = after[record.id] = operation.change(record, now, reason)
        compact(path, header, tasks, loaded=loaded)
    finally:
        unlock(lock_fd)
    for task_id, old in before.items():
        record = after[task_id]
        line = f"{_named(record)}: {old.status.value} -> {record.status.value}"
        if record.status is Status.QUEUED:
            line += f"; it {_how_it_runs(record)}"
            if old.status is Status.COMPLETED:
                line += " (its key's earlier result is discarded)"
        print(line)
    others = [i for i in interrupted if i not in before]
    if others:
        print(f"queued again (they were running when their process stopped): {', '.join(others)}")
    if loaded.torn is not None:
        print(f"dropped the {_describe_torn(loaded.torn)}")
    noun = "task" if len(ids) == 1 else "tasks"
    print(f"{operation.verb} {len(ids)} {noun} in {path}; the change is durable")
    return EXIT_OK


# -- the command line ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="harnpool",
        description=(
            "Look at, check, compact and repair harnpool journals; cancel, fail or\n"
            "requeue their tasks."
        ),
        epilog=_EXIT_CODES,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"harnpool {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=f"{summary}\n\n{description}",
            epilog=_EXIT_CODES,
            formatter_class=formatter,
        )
        sub.add_argument(
            "journal",
            metavar="JOURNAL",
            help="the journal file (inspect, verify: or a PostgreSQL DSN)",
        )
        return sub

    def pool_name(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--name",
            type=_pool_name,
            default="default",
            help="with a PostgreSQL DSN for JOURNAL: the pool's name, as open_pool's "
            "(default: %(default)s)",
        )

    inspect = command(
        "inspect",
        "Print a table of the journal's tasks.",
        "Reads a snapshot: works while a pool has the journal open. A torn last line\n"
        "is reported on stderr and the rest is shown. JOURNAL may be a PostgreSQL DSN\n"
        "(postgresql://...), as open_pool takes it: the pool --name in that database\n"
        "is read, in one query, changing nothing.",
    )
    pool_name(inspect)
    inspect.add_argument(
        "--status",
        action="append",
        choices=[s.value for s in Status],
        metavar="STATUS",
        help="show only tasks in this status (repeatable): " + ", ".join(s.value for s in Status),
    )
    inspect.add_argument(
        "--key", metavar="PATTERN", help="show only tasks whose key matches (wildcards: * ? [...])"
    )
    inspect.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array, one object per task per line, times in epoch seconds",
    )
    inspect.set_defaults(run=_inspect)

    verify = command(
        "verify",
        "Check the journal without changing anything.",
        "Reads a snapshot: works while a pool has the journal open. Given a PostgreSQL\n"
        "DSN, checks that the database's schema version is one this harnpool knows\n"
        "and that every task of the pool --name decodes (its arguments and result\n"
        "are JSON); exit 2 if not, 7 if the database cannot be reached.",
    )
    pool_name(verify)
    verify.set_defaults(run=_verify)

    compact_ = command(
        "compact",
        "Rewrite the journal as its header and one record per task.",
        "Does what opening a pool does: tasks left running are queued again, a torn\n"
        "last line is dropped, and the file is replaced atomically. Takes the journal's\n"
        "lock, so it refuses while a pool has the journal open.",
    )
    compact_.set_defaults(run=_compact)

    salvage = command(
        "salvage",
        "Copy every decodable record of a damaged journal to a new file.",
        "The original is never changed. Lines that cannot be decoded, and any second\n"
        "header, are dropped and listed; if no header can be decoded a new one is\n"
        "written. The output opens with harnpool.open_pool. Takes the journal's lock,\n"
        "so it refuses while a pool has the journal open.",
    )
    salvage.add_argument("-o", "--output", required=True, metavar="NEW", help="the file to write")
    salvage.add_argument("--force", action="store_true", help="replace NEW if it exists")
    salvage.set_defaults(run=_salvage)

    def operator_command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        sub = command(
            name,
            summary,
            f"{description}\n\n"
            "Takes the journal's lock, so it refuses while a pool has the journal open\n"
            "(exit 3). Changes nothing unless every ID can be changed: an unknown id\n"
            "exits 6, a task in another status exits 4. Like opening a pool, it first\n"
            "queues again tasks left running and drops a torn last line; then it\n"
            "rewrites the journal atomically and durably with the new records.",
        )
        sub.add_argument("ids", nargs="+", metavar="ID", help="a task id, e.g. t12")
        sub.set_defaults(run=_operate)
        return sub

    cancel = operator_command(
        "cancel",
        "Record queued or running tasks as cancelled.",
        "Writes what Pool.cancel writes, with the reason 'cancelled by operator':\n"
        "the task never runs again and wait() raises TaskCancelled. A task left\n"
        "running by a stopped process is cancelled too. Finished tasks are refused.",
    )
    cancel.add_argument("--reason", type=_reason, metavar="TEXT", help="why, stored with it")
    fail = operator_command(
        "fail",
        "Record queued or running tasks as failed, e.g. a task that crashes its process.",
        f"Writes a failure with error type {OPERATOR_ERROR_TYPE!r} and the message\n"
        "'failed by operator' (and --reason): the task never runs again and wait()\n"
        "raises TaskFailed. Finished tasks are refused.",
    )
    fail.add_argument("--reason", type=_reason, metavar="TEXT", help="why, stored with it")
    operator_command(
        "requeue",
        "Queue finished (or interrupted) tasks again, so they run once more.",
        "The task keeps its id, key, priority and place in the queue; its result,\n"
        "error and finish time are cleared and its attempts start again at 0.\n"
        "A completed task is otherwise never run again for its key: requeueing one\n"
        "breaks that promise on purpose, as an operator's explicit decision (say,\n"
        "a result known to be wrong); a later submit with its key runs it again.\n"
        "A registered function's task resumes when a pool next opens the journal;\n"
        "any other runs once its function is submitted again with the same key.\n"
        "Refused: queued tasks, tasks with neither key nor registered function,\n"
        "and completed tasks of registered functions (their arguments are gone).",
    )
    return parser


def _pool_name(text: str) -> str:
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError("the pool name must be non-empty, without NUL")
    return text


def _reason(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the reason must not be blank")
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    code: int
    try:
        code = args.run(args)
    except _Failure as exc:
        print(f"harnpool: {exc}", file=sys.stderr)
        code = exc.code
    except JournalLockedError as exc:
        print(f"harnpool: {exc}; stop that pool first", file=sys.stderr)
        code = EXIT_LOCKED
    except (JournalCorruptError, JournalVersionError) as exc:
        print(f"harnpool: {exc}", file=sys.stderr)
        code = EXIT_UNREADABLE
    except SchemaVersionError as exc:
        print(f"harnpool: {exc}", file=sys.stderr)
        code = EXIT_UNREADABLE
    except DatabaseError as exc:  # the driver's text may span lines; the CLI prints one
        print(f"harnpool: {' '.join(str(exc).split())}", file=sys.stderr)
        code = EXIT_UNREACHABLE
    except JournalLinkError as exc:
        print(f"harnpool: {exc}", file=sys.stderr)
        code = EXIT_REFUSED
    except JournalOpenError as exc:  # an OSError that names the step that failed
        print(f"harnpool: {exc}", file=sys.stderr)
        code = EXIT_OS_ERROR
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            # The reader went away (``| head``): stay quiet, including at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        name = exc.filename if exc.filename is not None else args.journal
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        print(f"harnpool: {name!r}: {reason}", file=sys.stderr)
        code = EXIT_OS_ERROR
    except KeyboardInterrupt:
        print("harnpool: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:  # a bug: still one line, and never an exit code that means something
        cls = type(exc)
        print(
            f"harnpool: unexpected error on {_redacted(args.journal)!r}: "
            f"{cls.__module__}.{cls.__qualname__}: {exc}",
            file=sys.stderr,
        )
        code = EXIT_INTERNAL
    return code
