"""Every setting and per-task option, checked before anything is opened or written.

A value of the wrong type raises ``TypeError`` and one out of range raises
``ValueError``, each naming the parameter. The rules: ``bool`` is not an int;
an integer the journal stores fits in 64 bits; a number of seconds is an int or
a float, finite, and is kept as a float; text (keys, groups) is a ``str`` that
encodes as UTF-8, so it cannot hold a lone surrogate. Nothing in this module
touches a file: :func:`harnpool.open_pool` checks every setting before it
takes the lock, and a task's options are checked when its :class:`~harnpool.Job`
is built, before anything is written.
"""

from __future__ import annotations

import datetime
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ._queue import STRATEGIES, Strategy

__all__ = [
    "ON_FULL",
    "OnFull",
    "TaskOptions",
    "_Settings",
    "_SharedSettings",
    "_check_retry",
    "_retry_names",
    "check_due",
    "check_path",
    "check_shared",
    "check_task_id",
    "check_task_ids",
    "check_task_options",
    "check_wait_timeout",
    "is_dsn",
]

OnFull = Literal["block", "reject", "drop_oldest", "drop_newest"]
ON_FULL: tuple[OnFull, ...] = ("block", "reject", "drop_oldest", "drop_newest")

# The journal stores these integers; msgspec encodes and decodes 64-bit integers.
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1


def _type_error(name: str, expected: str, value: object) -> TypeError:
    return TypeError(f"{name} must be {expected}, not {type(value).__qualname__}")


def _int(name: str, value: object, *, minimum: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(name, "an int" + (" or None" if optional else ""), value)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    if value > _INT_MAX:
        raise ValueError(f"{name} must be at most {_INT_MAX} (the journal keeps 64 bits)")
    return int(value)


def _seconds(name: str, value: object, *, positive: bool, optional: bool = False) -> float | None:
    """A finite number of seconds as a float: more than 0 if ``positive``, else 0 or more."""
    if value is None and optional:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _type_error(name, "a number of seconds" + (" or None" if optional else ""), value)
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond float's range
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    if positive and not seconds > 0:
        raise ValueError(f"{name} must be more than 0 seconds, not {value!r}")
    if not positive and seconds < 0:
        raise ValueError(f"{name} must be 0 seconds or more, not {value!r}")
    return seconds


def _text(name: str, value: object) -> str | None:
    """None, or a ``str`` that can be written to the journal as UTF-8."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _type_error(name, "a str or None", value)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{name} must encode as UTF-8; it holds a lone surrogate at index {exc.start}"
            ) from None
    return str(value)


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise _type_error(name, f"one of {', '.join(choices)}", value)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _retry_types(retry_on: object) -> tuple[type[BaseException], ...] | None:
    """``retry_on`` as a tuple of exception types (None stays None)."""
    if retry_on is None:
        return None
    if isinstance(retry_on, str | bytes) or not isinstance(retry_on, Iterable):
        raise _type_error("retry_on", "an iterable of exception types or None", retry_on)
    types = tuple(retry_on)
    for cls in types:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"retry_on takes exception types, not {cls!r}")
    return types


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _retry_names(retry_on: Iterable[type[BaseException]] | None) -> tuple[str, ...] | None:
    """The qualified names the journal stores for ``retry_on`` (checked again here)."""
    types = _retry_types(retry_on)
    if types is None:
        return None
    names = tuple(_type_name(cls) for cls in types)
    for name in names:
        _text("the name of a retry_on type", name)
    return names


def _check_retry(retries: object, timeout: object) -> tuple[int | None, float | None]:
    """Check ``retries`` (None or an int >= 0) and ``timeout`` (None or seconds > 0)."""
    return (
        _int("retries", retries, minimum=0, optional=True),
        _seconds("timeout", timeout, positive=True, optional=True),
    )


def check_path(path: object) -> str:
    """The journal's path as a str; a str or ``os.PathLike`` giving one, without NUL."""
    if not isinstance(path, str | os.PathLike):
        raise _type_error("path", "a str or an os.PathLike", path)
    fspath = os.fspath(path)
    if not isinstance(fspath, str):
        raise _type_error("path", "a str path (bytes paths are not supported)", fspath)
    if not fspath:
        raise ValueError("path must not be empty")
    if "\0" in fspath:
        raise ValueError("path must not contain a NUL character")
    try:
        os.fsencode(fspath)
    except UnicodeEncodeError:
        raise ValueError(f"path {fspath!r} cannot be encoded as a file name") from None
    return fspath


def check_task_id(task_id: object) -> str:
    """A task id must be a ``str``."""
    if not isinstance(task_id, str):
        raise _type_error("task_id", "a str", task_id)
    return task_id


def check_task_ids(ids: object) -> list[str]:
    """Task ids to wait for: an iterable of ``str`` (but not a ``str`` itself), read once."""
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise _type_error("ids", "an iterable of task ids (str)", ids)
    checked = list(ids)
    for task_id in checked:
        if not isinstance(task_id, str):
            raise TypeError(f"ids must hold only task ids (str), not {type(task_id).__qualname__}")
    return checked


def check_wait_timeout(timeout: object) -> float | None:
    """``Pool.wait``'s timeout: None, or a finite number of seconds, 0 or more."""
    return _seconds("timeout", timeout, positive=False, optional=True)


#: The latest due time a task may have: the end of year 9999, which both
#: storages (and ``datetime``) can represent.
_LATEST_DUE = 253402300800.0


def check_due(delay: object, run_at: object) -> tuple[float | None, float | None]:
    """Check a task's ``delay`` (seconds from submit) and ``run_at`` (an aware datetime).

    Returns:
        ``delay`` as float seconds (None or 0 for none), and ``run_at`` as Unix seconds.

    Raises:
        TypeError: Both were given, ``delay`` is not a number of seconds, or
            ``run_at`` not a ``datetime.datetime``.
        ValueError: ``delay`` is negative, not finite or beyond year 9999;
            ``run_at`` is naive (no ``tzinfo``).
    """
    if delay is not None and run_at is not None:
        raise TypeError("give delay or run_at, not both")
    if run_at is not None:
        if not isinstance(run_at, datetime.datetime):
            raise _type_error("run_at", "an aware datetime.datetime or None", run_at)
        if run_at.utcoffset() is None:
            raise ValueError(
                f"run_at must be an aware datetime (with a tzinfo, e.g. datetime.UTC), "
                f"not the naive {run_at.isoformat()!r}"
            )
        return None, run_at.timestamp()
    seconds = _seconds("delay", delay, positive=False, optional=True)
    if seconds is not None and time.time() + seconds >= _LATEST_DUE:
        raise ValueError(f"delay must end before the year 10000, not {delay!r} seconds from now")
    return seconds, None


TaskOptions = tuple[
    str | None, int, str | None, int | None, tuple[type[BaseException], ...] | None, float | None
]
"""A task's options, checked: key, priority, group, retries, retry_on, timeout."""


def check_task_options(
    key: object,
    priority: object,
    group: object,
    retries: object,
    retry_on: object,
    timeout: object,
    /,
) -> TaskOptions:
    """Check one task's options (as ``submit`` and ``Job`` take them).

    This runs on every submit: the common values (None, a plain int, an ASCII
    str) take a quick path, anything else the full check.
    """
    if type(priority) is not int or not _INT_MIN <= priority <= _INT_MAX:
        priority = _int("priority", priority, minimum=_INT_MIN)
    if key is not None and (type(key) is not str or not key.isascii()):
        key = _text("key", key)
    if group is not None and (type(group) is not str or not group.isascii()):
        group = _text("group", group)
    if retries is not None or timeout is not None:
        retries, timeout = _check_retry(retries, timeout)
    if retry_on is not None:
        retry_on = _retry_types(retry_on)
    return key, priority, group, retries, retry_on, timeout  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class _Settings:
    """A pool's settings; building one checks them all, and normalises numbers to float."""

    max_concurrent: int
    max_queued: int | None = None
    on_full: OnFull = "block"
    strategy: Strategy = "priority"
    aging: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] | None = None
    retry_backoff: float = 0.5
    retry_backoff_max: float = 60.0
    timeout: float | None = None
    keep_finished: int | None = None
    keep_finished_for: float | None = None
    max_recoveries: int | None = 5

    def __post_init__(self) -> None:
        # Given as Any: the values come straight from the caller.
        values: dict[str, Any] = {
            "max_concurrent": _int("max_concurrent", self.max_concurrent, minimum=1),
            "max_queued": _int("max_queued", self.max_queued, minimum=1, optional=True),
            "retries": _int("retries", self.retries, minimum=0),
            "retry_on": _retry_types(self.retry_on),
            "retry_backoff": _seconds("retry_backoff", self.retry_backoff, positive=False),
            "retry_backoff_max": _seconds(
                "retry_backoff_max", self.retry_backoff_max, positive=False
            ),
            "timeout": _seconds("timeout", self.timeout, positive=True, optional=True),
            "aging": _seconds("aging", self.aging, positive=True, optional=True),
            "keep_finished": _int("keep_finished", self.keep_finished, minimum=0, optional=True),
            "keep_finished_for": _seconds(
                "keep_finished_for", self.keep_finished_for, positive=False, optional=True
            ),
            "max_recoveries": _int("max_recoveries", self.max_recoveries, minimum=0, optional=True),
        }
        _choice("on_full", self.on_full, ON_FULL)
        _choice("strategy", self.strategy, STRATEGIES)
        if values["retry_backoff_max"] < values["retry_backoff"]:
            raise ValueError(
                f"retry_backoff_max ({self.retry_backoff_max!r}) must be at least "
                f"retry_backoff ({self.retry_backoff!r})"
            )
        aging = values["aging"]
        if aging is not None and not math.isfinite(1.0 / aging):
            # The ready queue orders by submitted_at / aging.
            raise ValueError(f"aging must be a usable number of seconds, not {aging!r}")
        for name, value in values.items():
            object.__setattr__(self, name, value)


#: What opens a PostgreSQL pool rather than a journal.
DSN_SCHEMES = ("postgresql://", "postgres://")


def is_dsn(path: object) -> bool:
    """Whether ``open_pool``'s first argument names a PostgreSQL database."""
    return isinstance(path, str) and path.startswith(DSN_SCHEMES)


@dataclass(frozen=True, slots=True)
class _SharedSettings:
    """The settings only a pool shared through PostgreSQL has, checked."""

    #: The pool's name within the database.
    name: str
    #: How many tasks this process runs at once (0: it only submits and waits).
    workers: int
    #: Seconds a claimed task stays owned without renewal.
    lease: float


def check_shared(
    dsn: bool, name: object, workers: object, lease: object, settings: _Settings
) -> _SharedSettings | None:
    """Check the settings of a shared pool; refuse them, and what it cannot honour, otherwise.

    Args:
        dsn: Whether the pool is opened on a database (else on a journal).

    Returns:
        The shared settings with their defaults filled in, or None for a journal.

    Raises:
        TypeError: ``name`` is not a str or None, ``workers`` not an int or
            None, ``lease`` not a number of seconds or None.
        ValueError: A value is out of range (an empty ``name``, or one with a
            NUL; ``workers`` below 0; ``lease`` not above 0), a shared setting
            was given with a journal path, or a setting the shared pool cannot
            honour was given with a DSN.
    """
    checked_name = _text("name", name)
    if checked_name is not None and (not checked_name or "\0" in checked_name):
        raise ValueError("name must be a non-empty str without NUL characters")
    checked_workers = _int("workers", workers, minimum=0, optional=True)
    checked_lease = _seconds("lease", lease, positive=True, optional=True)
    if not dsn:
        given = [
            n for n, v in (("name", name), ("workers", workers), ("lease", lease)) if v is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} given with a journal path: name, workers and lease "
                "apply only to a pool opened on a PostgreSQL database (a postgresql:// DSN)"
            )
        return None
    refused = [
        f"{n}={v!r}"
        for n, v, default in (
            ("strategy", settings.strategy, "priority"),
            ("on_full", settings.on_full, "block"),
            ("max_queued", settings.max_queued, None),
            ("aging", settings.aging, None),
        )
        if v != default
    ]
    if refused:
        raise ValueError(
            f"{', '.join(refused)}: a pool shared through PostgreSQL does not support "
            "this; it runs tasks by priority, then in submission order, with an unbounded "
            "queue"
        )
    return _SharedSettings(
        name="default" if checked_name is None else checked_name,
        workers=settings.max_concurrent if checked_workers is None else checked_workers,
        lease=30.0 if checked_lease is None else checked_lease,
    )
