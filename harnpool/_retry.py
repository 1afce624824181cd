"""Retry policy: which failures are retried, and after how long."""

from __future__ import annotations

import random

from ._records import TaskRecord
from ._settings import _type_name

__all__ = ["backoff", "retryable"]


def retryable(record: TaskRecord, exc: BaseException) -> bool:
    """Whether ``exc`` is one of the exception types ``record`` retries."""
    if record.retry_on is None:
        return isinstance(exc, Exception)
    names = {_type_name(cls) for cls in type(exc).__mro__}
    return not names.isdisjoint(record.retry_on)


def backoff(failures: int, first: float, longest: float, rng: random.Random) -> float:
    """Seconds to wait before the retry after the ``failures``-th failed attempt.

    The delay doubles from ``first`` up to ``longest``, times a random factor
    between 0.5 and 1.
    """
    delay: float = min(longest, first * 2 ** (failures - 1))
    return delay * (0.5 + rng.random() / 2)  # "equal jitter": spreads a burst out
