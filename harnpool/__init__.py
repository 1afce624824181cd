"""harnpool: an asyncio task pool whose every transition is journaled to disk."""

from ._errors import (
    HarnpoolError,
    JournalCorruptError,
    JournalError,
    JournalLockedError,
    JournalVersionError,
    JournalWriteError,
    PoolClosedError,
    ResultNotEncodableError,
    TaskFailed,
    UnknownTaskError,
)
from ._info import PoolStatistics, RecoveryReport, TaskInfo
from ._journal import TornTail
from ._pool import Job, Pool, open_pool
from ._records import Status

__all__ = [
    "HarnpoolError",
    "Job",
    "JournalCorruptError",
    "JournalError",
    "JournalLockedError",
    "JournalVersionError",
    "JournalWriteError",
    "Pool",
    "PoolClosedError",
    "PoolStatistics",
    "RecoveryReport",
    "ResultNotEncodableError",
    "Status",
    "TaskFailed",
    "TaskInfo",
    "TornTail",
    "UnknownTaskError",
    "open_pool",
]

__version__ = "0.1.0"

# Objects present themselves as harnpool's, the package users import from.
for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__"):
        _obj.__module__ = __name__
del _name, _obj
