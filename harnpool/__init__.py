"""harnpool: an asyncio task pool whose every transition is journaled to disk."""

from ._blocking import BlockingPool, open_blocking_pool
from ._context import CurrentTask, current_task
from ._errors import (
    ArgumentsNotEncodableError,
    CronUnavailableError,
    DatabaseError,
    HarnpoolError,
    InvalidCronError,
    JournalCorruptError,
    JournalError,
    JournalLinkError,
    JournalLockedError,
    JournalOpenError,
    JournalVersionError,
    JournalWriteError,
    NotEncodableError,
    NotInTaskError,
    PoolClosedError,
    QueueFull,
    ResultNotEncodableError,
    SchemaVersionError,
    TaskCancelled,
    TaskCrashLoop,
    TaskError,
    TaskFailed,
    TaskNotAttached,
    TaskRejected,
    UnknownTaskError,
    WaitDeadlock,
    WaitTimeout,
    WrongThreadError,
)
from ._info import PoolStatistics, RecoveryReport, TaskInfo
from ._journal import TornTail
from ._pool import Job, OnFull, Pool, TaskId, open_pool
from ._queue import Strategy
from ._records import Status
from ._registry import task
from ._schedule import CatchUp
from ._settings import Start

__all__ = [
    "ArgumentsNotEncodableError",
    "BlockingPool",
    "CatchUp",
    "CronUnavailableError",
    "CurrentTask",
    "DatabaseError",
    "HarnpoolError",
    "InvalidCronError",
    "Job",
    "JournalCorruptError",
    "JournalError",
    "JournalLinkError",
    "JournalLockedError",
    "JournalOpenError",
    "JournalVersionError",
    "JournalWriteError",
    "NotEncodableError",
    "NotInTaskError",
    "OnFull",
    "Pool",
    "PoolClosedError",
    "PoolStatistics",
    "QueueFull",
    "RecoveryReport",
    "ResultNotEncodableError",
    "SchemaVersionError",
    "Start",
    "Status",
    "Strategy",
    "TaskCancelled",
    "TaskCrashLoop",
    "TaskError",
    "TaskFailed",
    "TaskId",
    "TaskInfo",
    "TaskNotAttached",
    "TaskRejected",
    "TornTail",
    "UnknownTaskError",
    "WaitDeadlock",
    "WaitTimeout",
    "WrongThreadError",
    "current_task",
    "open_blocking_pool",
    "open_pool",
    "task",
]

__version__ = "0.1.0"

# Objects present themselves as harnpool's, the package users import from.
_FunctionType = type(open_pool)
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type | _FunctionType):
        _obj.__module__ = __name__
del _name, _obj, _FunctionType
