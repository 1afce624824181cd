"""Registered task functions: stored by name with their arguments, resumed on reopen."""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar, overload

import msgspec

from ._cache import WeakCache
from ._errors import ArgumentsNotEncodableError

__all__ = ["decode_args", "encode_args", "lookup", "registered_name", "resolve", "task"]

F = TypeVar("F", bound=Callable[..., Any])

_REGISTRY: dict[str, Callable[..., Any]] = {}
_ATTRIBUTE = "__harnpool_task__"
_encoder = msgspec.json.Encoder()


@overload
def task(fn: F, /) -> F: ...


@overload
def task(*, name: str | None = None) -> Callable[[F], F]: ...


def task(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Register a task function, so a reopened pool runs its unfinished tasks on its own.

    A task whose function is registered is journaled with the function's name
    and its positional arguments (encoded with msgspec), so after a restart
    the pool needs no resubmission: it looks the name up, decodes the
    arguments by the function's annotations, and runs the task in its place.
    The function itself is returned unchanged.

    Use it bare (``@harnpool.task``; the name is ``"module:qualname"``, and
    the module is imported on reopen if needed) or with a stable name that
    survives refactoring (``@harnpool.task(name="billing.charge")``).

    Raises:
        ValueError: Another function is registered under the name.
    """

    def register(fn: F) -> F:
        target: Callable[..., Any] = fn
        while isinstance(target, functools.partial):  # pragma: no cover - defensive
            target = target.func
        registered = name or f"{target.__module__}:{target.__qualname__}"
        existing = _REGISTRY.get(registered)
        if existing is not None and existing is not fn and _identity(existing) != _identity(fn):
            raise ValueError(f"another function is already registered as {registered!r}")
        _REGISTRY[registered] = fn
        setattr(fn, _ATTRIBUTE, registered)
        return fn

    return register if fn is None else register(fn)


def _identity(fn: Callable[..., Any]) -> tuple[str, str]:
    # A module run as a script and imported again defines the function twice.
    return (getattr(fn, "__module__", ""), getattr(fn, "__qualname__", ""))


def registered_name(fn: object) -> str | None:
    """The name ``fn`` was registered under, or None."""
    name = getattr(fn, _ATTRIBUTE, None)
    return name if isinstance(name, str) else None


def lookup(name: str) -> Callable[..., Any] | None:
    """Find a registered function, importing its module for a ``module:qualname`` name."""
    fn = _REGISTRY.get(name)
    if fn is None and ":" in name:
        module = name.partition(":")[0]
        try:
            importlib.import_module(module)
        except ImportError:
            return None
        fn = _REGISTRY.get(name)
    return fn


def resolve(name: str) -> Callable[..., Any] | None:
    """Find a function by its stored name: a registered one, else ``module:qualname`` imported.

    None if the module cannot be imported or holds no callable by that name.
    """
    fn = lookup(name)
    if fn is not None or ":" not in name:
        return fn
    module, _, qualname = name.partition(":")
    try:
        found: object = importlib.import_module(module)
    except ImportError:
        return None
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            return None
    return found if callable(found) else None


def encode_args(
    fn: Callable[..., Any], args: tuple[Any, ...], name: str | None = None
) -> msgspec.Raw:
    """Encode a stored task's arguments, or refuse them before anything is written.

    ``name`` is the function's stored name when it is not registered.
    """
    try:
        return msgspec.Raw(_encoder.encode(args))
    except Exception as exc:  # also RecursionError, and errors from code msgspec calls
        kinds = ", ".join(sorted({f"{type(a).__module__}.{type(a).__qualname__}" for a in args}))
        raise ArgumentsNotEncodableError(
            f"the arguments of {name or registered_name(fn)!r} cannot be stored as JSON "
            f"(types: {kinds}): {exc}; stored tasks need arguments msgspec can encode"
        ) from exc


def _find_positional_types(fn: Callable[..., Any]) -> tuple[list[Any], Any]:
    try:
        hints = typing.get_type_hints(fn)
        parameters = inspect.signature(fn).parameters.values()
    except Exception:  # unresolvable annotations or no signature: decode plain JSON
        return [], Any
    fixed: list[Any] = []
    rest: Any = Any
    for p in parameters:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            fixed.append(hints.get(p.name, Any))
        elif p.kind is p.VAR_POSITIONAL:
            rest = hints.get(p.name, Any)
    return fixed, rest


_positional_types = WeakCache(_find_positional_types)


def decode_args(fn: Callable[..., Any], raw: msgspec.Raw) -> tuple[Any, ...]:
    """Decode stored arguments as ``fn``'s parameters are annotated.

    Raises:
        msgspec.ValidationError: The stored arguments do not fit the annotations.
    """
    values = msgspec.json.decode(raw, type=list[msgspec.Raw])
    fixed, rest = _positional_types(fn)
    out = []
    for i, value in enumerate(values):
        kind = fixed[i] if i < len(fixed) else rest
        out.append(msgspec.json.decode(value, type=kind))
    return tuple(out)
