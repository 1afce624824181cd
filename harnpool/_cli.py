"""The command-line tool: ``python -m harnpool`` or ``harnpool``.

``inspect`` and ``verify`` read a snapshot of the journal and never write, so
they work while a pool has it open. ``compact`` and ``salvage`` take the
journal's lock, as a pool does, and refuse while anyone else holds it.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import fnmatch
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import msgspec

from . import __version__
from ._errors import (
    JournalCorruptError,
    JournalLinkError,
    JournalLockedError,
    JournalOpenError,
    JournalVersionError,
)
from ._journal import (
    Loaded,
    TornTail,
    _fsync_dir,
    _lines,
    _lock,
    _unlock,
    _write_all,
    compact,
    load,
    recover,
)
from ._records import FORMAT_VERSION, Header, Record, Status, TaskRecord

__all__ = ["main"]

EXIT_OK = 0
EXIT_TORN = 1
EXIT_UNREADABLE = 2
EXIT_LOCKED = 3
EXIT_REFUSED = 4
EXIT_OS_ERROR = 5
EXIT_USAGE = 64
EXIT_INTERNAL = 70

_EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}   success
  {EXIT_TORN}   verify: the journal ends in a torn line (a write cut short); the rest is sound
  {EXIT_UNREADABLE}   the journal is missing, corrupt, or written by a newer harnpool
  {EXIT_LOCKED}   compact, salvage: another process holds the journal's lock
  {EXIT_REFUSED}   salvage: the output exists (use --force) or is the journal itself;
      compact: the journal has more than one hard link
  {EXIT_OS_ERROR}   a file could not be read or written
  {EXIT_USAGE}  the command line is wrong
  {EXIT_INTERNAL}  an unexpected error: a bug in harnpool
"""


class _Failure(Exception):
    """A refusal or error to report in one line, with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _missing(path: str) -> _Failure:
    return _Failure(f"journal {path!r} does not exist", EXIT_UNREADABLE)


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


def _error_text(record: TaskRecord) -> str:
    if record.error_type is None and record.error_message is None:
        return ""
    kind = (record.error_type or "").removeprefix("builtins.")
    text = " ".join(f"{kind}: {record.error_message or ''}".split())
    if len(text) > _ERROR_WIDTH:
        text = text[: _ERROR_WIDTH - 1] + "…"
    return text


def _table(records: Sequence[TaskRecord]) -> str:
    header = ("ID", "KEY", "PRIORITY", "STATUS", "ATTEMPTS", "SUBMITTED", "STARTED", "FINISHED")
    rows = [
        (
            r.id,
            "-" if r.key is None else r.key,
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
    loaded = _load(path)
    if loaded.torn is not None:
        print(f"harnpool: journal {path!r}: {_describe_torn(loaded.torn)}", file=sys.stderr)
    statuses = {Status(value) for value in args.status or ()}
    records = [
        r
        for r in loaded.tasks.values()
        if (not statuses or r.status in statuses)
        and (args.key is None or (r.key is not None and fnmatch.fnmatchcase(r.key, args.key)))
    ]
    if args.json:
        encoded = [msgspec.json.encode(_row(r)).decode() for r in records]
        print("[\n" + ",\n".join(encoded) + "\n]" if encoded else "[]")
        return EXIT_OK
    if not records:
        print(f"no tasks match (the journal holds {len(loaded.tasks)})")
        return EXIT_OK
    print(_table(records))
    shown = f"{len(records)} of {len(loaded.tasks)}" if statuses or args.key else "all"
    print(f"\n{shown} tasks shown; times are local")
    return EXIT_OK


# -- verify ----------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    path: str = args.journal
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
    if not os.path.exists(path):
        raise _missing(path)  # before locking, which would leave a lock file behind
    lock_fd = _lock(path)
    try:
        before = os.stat(path).st_size
        loaded = _load(path)
        header, tasks, requeued, _ = recover(loaded)
        compact(path, header, tasks)
        after = os.stat(path).st_size
    finally:
        _unlock(lock_fd)
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
    for number, offset, raw in _lines(data):
        found.lines = number
        if not raw.strip():
            continue
        end = offset + len(raw)
        length = len(raw) + (end < len(data))
        try:
            record = _decoder.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            found.dropped.append(_Dropped(number, offset, length, f"undecodable: {exc}"))
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
            _write_all(fd, data)
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
    _fsync_dir(os.path.dirname(os.path.abspath(output)))


def _salvage(args: argparse.Namespace) -> int:
    path: str = args.journal
    output: str = args.output
    if not os.path.exists(path):
        raise _missing(path)
    if os.path.lexists(output):
        same = os.path.realpath(output) == os.path.realpath(path)
        if same or (os.path.exists(output) and os.path.samefile(output, path)):
            raise _Failure(
                f"output {output!r} is the journal itself; salvage never edits the original",
                EXIT_REFUSED,
            )
        if not args.force:
            raise _Failure(f"output {output!r} exists; pass --force to replace it", EXIT_REFUSED)
    lock_fds = [_lock(path)]
    try:
        if args.force and os.path.lexists(output):
            lock_fds.append(_lock(output))  # a pool may have the file we would replace open
        with open(path, "rb") as f:
            data = f.read()
        found = _read_salvageable(path, data)
        header_line = found.header_line
        if found.header is None:
            header_line = msgspec.json.encode(_synthesise_header(found))
        body = b"".join(line + b"\n" for line in [header_line, *found.records])
        _write_new_file(output, body, replace=args.force)
    finally:
        for fd in reversed(lock_fds):
            _unlock(fd)
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


# -- the command line ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="harnpool",
        description="Look at, check, compact and repair harnpool journals.",
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
        sub.add_argument("journal", metavar="JOURNAL", help="the journal file")
        return sub

    inspect = command(
        "inspect",
        "Print a table of the journal's tasks.",
        "Reads a snapshot: works while a pool has the journal open. A torn last line\n"
        "is reported on stderr and the rest is shown.",
    )
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
        "Reads a snapshot: works while a pool has the journal open.",
    )
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
    return parser


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
            f"harnpool: unexpected error on {args.journal!r}: "
            f"{cls.__module__}.{cls.__qualname__}: {exc}",
            file=sys.stderr,
        )
        code = EXIT_INTERNAL
    return code
