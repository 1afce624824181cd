"""Results and errors as the storage keeps them: encoded, decoded by annotation, made storable."""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import msgspec

from ._cache import WeakCache
from ._errors import TaskCancelled, TaskFailed, TaskRejected
from ._records import Status, TaskRecord
from ._registry import lookup

__all__ = ["decode_outcome", "error_message", "storable"]


def storable(text: str) -> str:
    """``text`` made writable as UTF-8: a lone surrogate becomes its escape."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_message(exc: BaseException) -> str:
    """``str(exc)`` as the journal can store it, even when that raises."""
    try:
        return storable(str(exc))
    except Exception:
        return f"<str() of the {type(exc).__qualname__} raised>"


def _result_decoder(fn: Callable[..., object]) -> msgspec.json.Decoder[Any] | None:
    """A decoder for ``fn``'s return annotation, or None to decode plain JSON."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    try:
        hint = typing.get_type_hints(target).get("return", inspect.Signature.empty)
    except Exception:  # unresolvable annotations: fall back to plain JSON
        return None
    if hint is inspect.Signature.empty:
        return None
    if hint is None:
        hint = type(None)
    try:
        return msgspec.json.Decoder(hint)
    except TypeError:  # a type msgspec does not know
        return None


_plain_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


_decoder_for = WeakCache[Callable[..., object], msgspec.json.Decoder[Any] | None](_result_decoder)


def decode_outcome(
    record: TaskRecord, fn: Callable[..., object] | None, exc: BaseException | None
) -> Any:
    """What ``wait`` gives for a finished task: its result, typed by ``fn``, or its error.

    Raises:
        TaskCancelled: The task was cancelled.
        TaskRejected: A full queue dropped the task.
        TaskFailed: The task failed; ``exc``, the exception this process saw, is its cause.
    """
    if record.status is Status.COMPLETED:
        assert not isinstance(record.result, msgspec.UnsetType)
        if fn is None and record.name is not None:
            fn = lookup(record.name)  # a registered function types its stored result too
        decoder = _plain_decoder if fn is None else _decoder_for(fn)
        if decoder is not None:
            with contextlib.suppress(msgspec.ValidationError):
                return decoder.decode(record.result)
            # the annotation does not describe what was returned: plain JSON
        return _plain_decoder.decode(record.result)
    if record.status is Status.CANCELLED:
        raise TaskCancelled(task_id=record.id, key=record.key)
    if record.status is Status.REJECTED:
        raise TaskRejected(task_id=record.id, key=record.key, reason=record.reason or "")
    raise TaskFailed(
        task_id=record.id,
        key=record.key,
        error_type=record.error_type or "",
        error_message=record.error_message or "",
    ) from exc
