"""harnpool: an asyncio task pool whose every transition is journaled to disk."""

from ._blocking import BlockingPool, open_blocking_pool
from ._errors import (
    ArgumentsNotEncodableError,
    DatabaseError,
    HarnpoolError,
    JournalCorruptError,
    JournalError,
    JournalLinkError,
    JournalLockedError,
    JournalOpenError,
    JournalVersionError,
    JournalWriteError,
    NotEncodableError,
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

__all__ = [
    "ArgumentsNotEncodableError",
    "BlockingPool",
    "DatabaseError",
    "HarnpoolError",
    "Job",
    "JournalCorruptError",
    "JournalError",
    "JournalLinkError",
    "JournalLockedError",
    "JournalOpenError",
    "JournalVersionError",
    "JournalWriteError",
    "NotEncodableError",
    "OnFull",
    "Pool",
    "PoolClosedError",
    "PoolStatistics",
    "QueueFull",
    "RecoveryReport",
    "ResultNotEncodableError",
    "SchemaVersionError",
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
