"""The errors harnpool raises.

Every error derives from :class:`HarnpoolError`. Where a caller would already
catch a builtin, the error subclasses it too::

    HarnpoolError
    ├── JournalError
    │   ├── JournalCorruptError (ValueError)   a line cannot be trusted: path, line, offset
    │   ├── JournalLinkError                   the journal has more than one hard link
    │   ├── JournalLockedError                 another pool holds the journal: path, pid
    │   ├── JournalOpenError (OSError)         opening or compacting failed: path, step, errno
    │   ├── JournalVersionError                a newer harnpool wrote the journal
    │   └── JournalWriteError (OSError)        a write or fsync failed: the pool has stopped
    ├── DatabaseError                          PostgreSQL failed or could not be reached: pool
    │   └── SchemaVersionError                 a newer harnpool upgraded the database's schema
    ├── PoolClosedError (RuntimeError)         the pool was used after it closed
    ├── InvalidCronError (ValueError)          a schedule's cron expression cannot be parsed
    ├── CronUnavailableError (ImportError)     cron= without the cron extra (cronsim) installed
    ├── QueueFull                              max_queued reached with on_full="reject"
    ├── UnknownTaskError (KeyError)            no task has that id
    ├── NotEncodableError (TypeError)          a value cannot be stored as JSON
    │   ├── ArgumentsNotEncodableError         a registered task's arguments, refused at submit
    │   └── ResultNotEncodableError            a task's result: the task fails
    ├── WaitTimeout (TimeoutError)             wait(timeout=...) ran out; the task goes on
    ├── WaitDeadlock (RuntimeError)            a task waits for one no free slot can ever run
    ├── WrongThreadError (RuntimeError)        a pool was called from a thread it cannot serve
    ├── NotInTaskError (RuntimeError)          current_task() was called outside a task
    ├── TaskNotAttached                        wait() on a task whose function is not known here
    ├── TaskCrashLoop                          crashes interrupted a task more than max_recoveries
    │                                          times: the error it is failed with
    └── TaskError                              the task ended without a result: task_id, key
        ├── TaskFailed                         its function raised: type and message
        ├── TaskCancelled                      it was cancelled
        └── TaskRejected                       the full queue dropped it: reason
"""

from __future__ import annotations

import os

__all__ = [
    "CronUnavailableError",
    "DatabaseError",
    "HarnpoolError",
    "InvalidCronError",
    "JournalCorruptError",
    "JournalError",
    "JournalLinkError",
    "JournalLockedError",
    "JournalOpenError",
    "JournalVersionError",
    "JournalWriteError",
    "ArgumentsNotEncodableError",
    "NotEncodableError",
    "NotInTaskError",
    "PoolClosedError",
    "QueueFull",
    "ResultNotEncodableError",
    "SchemaVersionError",
    "TaskCancelled",
    "TaskCrashLoop",
    "TaskError",
    "TaskFailed",
    "TaskNotAttached",
    "TaskRejected",
    "UnknownTaskError",
    "WaitDeadlock",
    "WaitTimeout",
    "WrongThreadError",
]


class HarnpoolError(Exception):
    """The base of every error harnpool raises."""


def _named_journal(path: str | os.PathLike[str], real_path: str | None) -> str:
    """The journal as the user named it, and the file it resolves to if that differs."""
    path = os.fspath(path)
    if real_path is None or real_path == os.path.abspath(path):
        return repr(path)
    return f"{path!r} (resolved to {real_path!r})"


class JournalError(HarnpoolError):
    """Something is wrong with a journal file.

    Attributes:
        path: The journal's path.
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str]) -> None:
        super().__init__(message)
        self.path = os.fspath(path)


class _FromOSError(OSError):
    """An OSError that carries the errno, strerror and filename of the one that caused it.

    Its message stays harnpool's own: OSError's ``__str__`` would show only the
    errno and strerror once they are set.
    """

    def _take(self, cause: BaseException | None, filename: str | None) -> None:
        if isinstance(cause, OSError):
            self.errno = cause.errno
            self.strerror = cause.strerror
            self.filename = cause.filename if cause.filename is not None else filename
            self.filename2 = cause.filename2
        else:
            self.filename = filename

    def __str__(self) -> str:
        return BaseException.__str__(self)


class JournalCorruptError(JournalError, ValueError):
    """A journal cannot be loaded; the file was left as it was.

    Attributes:
        path: The journal's path.
        line: The 1-based number of the line that could not be trusted.
        offset: The byte offset at which that line starts.
        reason: What is wrong with it.
    """

    def __init__(
        self, *, path: str | os.PathLike[str], line: int, offset: int, reason: str
    ) -> None:
        super().__init__(
            f"journal {os.fspath(path)!r} is corrupt at line {line} "
            f"(byte offset {offset}): {reason}",
            path=path,
        )
        self.line = line
        self.offset = offset
        self.reason = reason


class JournalLinkError(JournalError):
    """The journal file has more than one hard link, so harnpool refuses it.

    Compaction replaces the file with a new one: the other names would keep the
    old contents, and a pool opened through another name would take another
    lock. Nothing was written.

    Attributes:
        path: The journal's path as given.
        real_path: The file it resolves to (symbolic links followed).
        links: The file's hard link count.
    """

    def __init__(self, *, path: str | os.PathLike[str], real_path: str, links: int) -> None:
        super().__init__(
            f"journal {_named_journal(path, real_path)} has {links} hard links; a journal "
            "must have one name, since compaction replaces the file and the other names "
            "would keep the old one: remove the other links, or open a copy",
            path=path,
        )
        self.real_path = real_path
        self.links = links


class JournalLockedError(JournalError):
    """Another pool, in this process or another, holds the journal's lock.

    The lock is ``<real path>.lock``, beside the file the journal's path
    resolves to, so pools opened through different symbolic links to one
    journal exclude each other.

    Attributes:
        path: The journal's path as given.
        lock_path: The lock file.
        pid: The holder's process id as it wrote it, or None if unreadable.
    """

    def __init__(
        self,
        *,
        path: str | os.PathLike[str],
        lock_path: str,
        pid: int | None,
        real_path: str | None = None,
    ) -> None:
        holder = "an unknown process" if pid is None else f"process {pid}"
        if pid == os.getpid():
            holder += " (this process: another pool is open on it)"
        super().__init__(
            f"journal {_named_journal(path, real_path)} is locked by {holder} "
            f"through {lock_path!r}",
            path=path,
        )
        self.lock_path = lock_path
        self.pid = pid


class JournalOpenError(JournalError, _FromOSError):
    """A file operation failed while opening or compacting a journal.

    It is an OSError with the ``errno``, ``strerror`` and ``filename`` of the
    failure, which is also its ``__cause__``. No pool was opened, and the
    journal holds its old contents, or the new compacted ones if only the
    final directory sync failed; no ``<journal>.compact`` is left behind.

    Attributes:
        path: The journal's path as given.
        real_path: The file it resolves to (symbolic links followed).
        step: What was being done: ``"checking"``, ``"locking"``,
            ``"reading"``, ``"writing the compacted file"``, ``"renaming"``,
            ``"syncing the journal"`` (an already compact one, kept as it
            is), ``"syncing the directory"`` or ``"opening for appending"``.
    """

    def __init__(
        self,
        *,
        path: str | os.PathLike[str],
        real_path: str,
        step: str,
        cause: OSError,
        filename: str | None = None,
    ) -> None:
        reason = cause.strerror or str(cause)
        target = cause.filename if cause.filename is not None else filename
        target = None if target is None else os.fspath(target)
        # The journal itself is named already.
        on = "" if target in (None, real_path, os.fspath(path)) else f" {target!r}"
        super().__init__(
            f"journal {_named_journal(path, real_path)}: {step}{on} failed: {reason}",
            path=path,
        )
        self._take(cause, filename)
        self.real_path = real_path
        self.step = step


class JournalVersionError(JournalError):
    """The journal's format is newer than this version of harnpool reads.

    Attributes:
        path: The journal's path.
        found: The format version in the journal's header.
        supported: The newest format this version reads.
    """

    def __init__(self, *, path: str | os.PathLike[str], found: int, supported: int) -> None:
        super().__init__(
            f"journal {os.fspath(path)!r} has format {found}; this harnpool reads format "
            f"{supported} and older: upgrade harnpool to open it",
            path=path,
        )
        self.found = found
        self.supported = supported


class JournalWriteError(JournalError, _FromOSError):
    """Writing or syncing the journal failed, so the pool stopped.

    Nothing written after the failure was acknowledged. The pool never retries
    a failed fsync (the kernel may already have dropped the dirty pages); reopen
    the journal to carry on from what is durable. ``errno``, ``strerror`` and
    ``filename`` are those of the failure (``filename`` is the journal's path
    when the failure named none); they are None if it was not an OSError.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str],
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message, path=path)
        self._take(cause, os.fspath(path))


class DatabaseError(HarnpoolError):
    """A PostgreSQL pool's database failed, refused a statement, or could not be reached.

    The driver's error, when there is one, is the ``__cause__``. A statement
    that failed was rolled back whole: nothing it would have written is stored.

    Attributes:
        pool: The pool's name.
    """

    def __init__(self, message: str, *, pool: str) -> None:
        super().__init__(message)
        self.pool = pool


class SchemaVersionError(DatabaseError):
    """The database's harnpool schema is newer than this version of harnpool knows.

    Nothing was changed in the database.

    Attributes:
        pool: The pool's name.
        found: The schema version the database has.
        supported: The newest schema version this harnpool knows.
    """

    def __init__(self, *, pool: str, found: int, supported: int) -> None:
        super().__init__(
            f"pool {pool!r}: the database has harnpool schema version {found}; this harnpool "
            f"knows versions up to {supported}: upgrade harnpool to open it",
            pool=pool,
        )
        self.found = found
        self.supported = supported


class PoolClosedError(HarnpoolError, RuntimeError):
    """The pool was used after its ``async with`` block ended.

    :meth:`Pool.cancel` raises it also while the pool stops: once the block was
    left by an exception or cancellation, or has drained.
    """


class InvalidCronError(HarnpoolError, ValueError):
    """A schedule's ``cron`` expression cannot be parsed; nothing was scheduled.

    Attributes:
        expression: The expression as given.
        schedule: The schedule's name.
    """

    def __init__(self, *, expression: str, schedule: str, reason: str) -> None:
        super().__init__(
            f"schedule {schedule!r}: cron={expression!r} is not a valid cron expression "
            f"({reason}); give five fields (minute hour day month weekday), or six with "
            "seconds first, e.g. '*/5 * * * *'"
        )
        self.expression = expression
        self.schedule = schedule


class CronUnavailableError(HarnpoolError, ImportError):
    """``cron=`` was given, but the cron extra (the cronsim package) is not installed."""

    def __init__(self, *, schedule: str) -> None:
        super().__init__(
            f"schedule {schedule!r}: cron= needs the cronsim package: install harnpool[cron] "
            "(pip install 'harnpool[cron]'), or schedule with every= instead"
        )
        self.schedule = schedule


class UnknownTaskError(HarnpoolError, KeyError):
    """No task with that id exists in the pool.

    Attributes:
        task_id: The id asked for.
        dropped: True if the pool gave that id to a task once and retention
            (``keep_finished``, ``keep_finished_for``) has since dropped it.
    """

    def __init__(self, task_id: str, *, dropped: bool = False) -> None:
        super().__init__(task_id)
        self.task_id = task_id
        self.dropped = dropped

    def __str__(self) -> str:
        if self.dropped:
            return (
                f"no task with id {self.task_id!r} in this pool: it finished, and "
                "keep_finished or keep_finished_for dropped it"
            )
        return f"no task with id {self.task_id!r} in this pool"


class QueueFull(HarnpoolError):
    """The pool holds ``max_queued`` queued tasks and ``on_full`` is ``"reject"``.

    Nothing was written for the refused task.
    """


class WaitTimeout(HarnpoolError, TimeoutError):
    """``wait(timeout=...)`` ran out before the task finished; the task goes on.

    Also raised by ``as_completed`` and ``results`` when their ``timeout`` runs
    out: then ``task_id`` is the first (in the order given) of the tasks that
    had not finished, and ``unfinished`` how many had not.

    Attributes:
        task_id: The task waited for.
        unfinished: How many of the tasks waited for had not finished (1 for ``wait``).
    """

    def __init__(self, task_id: str, timeout: float, *, unfinished: int = 1) -> None:
        more = (
            "" if unfinished <= 1 else f" (nor did {unfinished - 1} more of the tasks waited for)"
        )
        super().__init__(f"task {task_id} did not finish within {timeout} seconds{more}")
        self.task_id = task_id
        self.unfinished = unfinished


class NotInTaskError(HarnpoolError, RuntimeError):
    """:func:`harnpool.current_task` was called outside a task a pool runs."""


class WaitDeadlock(HarnpoolError, RuntimeError):
    """A running task called ``wait`` for a task that can never finish.

    Raised inside the waiting task, so its attempt fails instead of holding its
    slot forever: the task waited for is the waiter itself or waits for it
    (directly or through others), or every slot of the pool would be held by a
    task blocked in ``wait``, so nothing queued could ever start.

    Attributes:
        task_id: The task waited for.
        waiter_id: The running task that called ``wait``.
        reason: Why the task waited for can never finish.
    """

    def __init__(self, *, task_id: str, waiter_id: str, reason: str) -> None:
        super().__init__(
            f"task {waiter_id} waited for task {task_id}, which can never finish: {reason}"
        )
        self.task_id = task_id
        self.waiter_id = waiter_id
        self.reason = reason


class WrongThreadError(HarnpoolError, RuntimeError):
    """A pool was called from a thread it cannot be called from; nothing was done.

    A :class:`Pool` belongs to the event loop that opened it, and its methods
    are called from that loop's thread. Sync code and other threads use
    :func:`harnpool.open_blocking_pool`, whose :class:`BlockingPool` hands
    every call to the pool's loop; its methods block, so they in turn cannot
    be called from that loop's own thread.

    Attributes:
        pool: The journal's path.
        method: What was called, e.g. ``"Pool.submit"``.
        thread: The name of the thread it was called from.
    """

    def __init__(self, message: str, *, pool: str, method: str, thread: str) -> None:
        super().__init__(message)
        self.pool = pool
        self.method = method
        self.thread = thread


def _named(task_id: str, key: str | None) -> str:
    return task_id if key is None else f"{task_id} (key {key!r})"


class TaskNotAttached(HarnpoolError):
    """``wait`` was called for an unfinished task whose function this process does not know.

    Such a task was recovered from the journal and cannot run until its
    function is attached: submit it again with the same key, or register the
    function with :func:`harnpool.task` before the pool opens.

    Attributes:
        task_id: The task waited for.
        key: Its idempotency key, if any.
        function: The qualified name of its function, as journaled.
    """

    def __init__(self, *, task_id: str, key: str | None, function: str | None) -> None:
        how = "submit it again with its key" if key is not None else "register its function"
        super().__init__(
            f"task {_named(task_id, key)} cannot run: this process does not know its "
            f"function {function!r}; {how} before waiting for it"
        )
        self.task_id = task_id
        self.key = key
        self.function = function


class TaskCrashLoop(HarnpoolError):
    """The error a task is failed with when crashes interrupted it too often.

    A task found ``running`` when its journal is opened was interrupted by the
    death of its process. Once that happened more than ``max_recoveries``
    times (see :func:`harnpool.open_pool`), the task is presumed to crash its
    process and is recorded ``failed`` on open with this error's type and
    message, so ``wait`` raises :class:`TaskFailed`.

    Attributes:
        task_id: The task.
        key: Its idempotency key, if any.
        recoveries: How many times its runs were interrupted.
        max_recoveries: The limit it passed.
    """

    def __init__(
        self, *, task_id: str, key: str | None, recoveries: int, max_recoveries: int
    ) -> None:
        super().__init__(
            f"task {_named(task_id, key)} was interrupted {recoveries} times "
            f"(max_recoveries={max_recoveries}) and is presumed to crash its process; "
            "it is failed instead of run again"
        )
        self.task_id = task_id
        self.key = key
        self.recoveries = recoveries
        self.max_recoveries = max_recoveries


class NotEncodableError(HarnpoolError, TypeError):
    """A value cannot be stored as JSON by msgspec."""


class ArgumentsNotEncodableError(NotEncodableError):
    """A registered task's arguments cannot be stored; nothing was submitted."""


class ResultNotEncodableError(NotEncodableError):
    """A task returned a value msgspec cannot encode as JSON.

    The task is recorded as failed with this error's type and message.
    """


class TaskError(HarnpoolError):
    """A task ended without a result.

    Attributes:
        task_id: The task's id.
        key: The task's idempotency key, if any.
    """

    def __init__(self, message: str, *, task_id: str, key: str | None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.key = key


class TaskFailed(TaskError):
    """A task's function raised (on its last attempt); the task is recorded as failed.

    When the failure happened in this process the original exception is the
    ``__cause__``; after a restart only its type and message are known.

    Attributes:
        task_id: The failed task's id.
        key: The task's idempotency key, if any.
        error_type: The exception's qualified type name, e.g. ``"builtins.ValueError"``.
        error_message: ``str()`` of the exception.
    """

    def __init__(
        self, *, task_id: str, key: str | None, error_type: str, error_message: str
    ) -> None:
        super().__init__(
            f"task {_named(task_id, key)} failed: {error_type}: {error_message}",
            task_id=task_id,
            key=key,
        )
        self.error_type = error_type
        self.error_message = error_message


class TaskCancelled(TaskError):
    """The task was cancelled with ``Pool.cancel`` before it finished."""

    def __init__(self, *, task_id: str, key: str | None) -> None:
        super().__init__(f"task {_named(task_id, key)} was cancelled", task_id=task_id, key=key)


class TaskRejected(TaskError):
    """The pool's full queue dropped the task (``on_full`` ``drop_oldest``/``drop_newest``).

    Attributes:
        reason: ``"drop_oldest_queue_full"`` or ``"drop_newest_queue_full"``.
    """

    def __init__(self, *, task_id: str, key: str | None, reason: str) -> None:
        super().__init__(
            f"task {_named(task_id, key)} was rejected: {reason}", task_id=task_id, key=key
        )
        self.reason = reason
