"""Registered task functions: stored by name with their arguments, resumed on reopen.

A stored task's arguments are one JSON value: the array of its positional
arguments, or, when a :func:`functools.partial` around the function binds
keywords, the object ``{"args": [...], "kwargs": {...}}``. An older harnpool
reading the object refuses it (the arguments do not decode) rather than run
the function without its keywords.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, overload

import msgspec

from ._cache import WeakCache
from ._errors import ArgumentsNotEncodableError

__all__ = [
    "BoundCall",
    "decode_call",
    "encode_args",
    "lookup",
    "registered_name",
    "resolve",
    "task",
    "unwrap",
]

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
    A :func:`functools.partial` of a registered function is journaled as that
    function, with the arguments and keywords the partial binds.
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


class BoundCall(NamedTuple):
    """A function to store by name, and every argument to call it with."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def unwrap(fn: Callable[..., Any], args: tuple[Any, ...]) -> BoundCall:
    """Look through the :func:`functools.partial` objects around ``fn``.

    Stops at a registered function (a registered partial included) or at the
    innermost function; the arguments the partials bind join ``args``.
    """
    kwargs: dict[str, Any] = {}
    while isinstance(fn, functools.partial) and registered_name(fn) is None:
        # The outer partial's keywords win, as they do when it is called.
        args = (*fn.args, *args)
        kwargs = {**fn.keywords, **kwargs}
        fn = fn.func
    return BoundCall(fn, args, kwargs)


def encode_args(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    name: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> msgspec.Raw:
    """Encode a stored task's arguments, or refuse them before anything is written.

    ``name`` is the function's stored name when it is not registered;
    ``kwargs`` the keywords a partial binds (see the module's docstring).
    """
    try:
        if kwargs:
            return msgspec.Raw(_encoder.encode({"args": args, "kwargs": kwargs}))
        return msgspec.Raw(_encoder.encode(args))
    except Exception as exc:  # also RecursionError, and errors from code msgspec calls
        values = (*args, *kwargs.values()) if kwargs else args
        kinds = ", ".join(sorted({f"{type(a).__module__}.{type(a).__qualname__}" for a in values}))
        raise ArgumentsNotEncodableError(
            f"the arguments of {name or registered_name(fn)!r} cannot be stored as JSON "
            f"(types: {kinds}): {exc}; stored tasks need arguments msgspec can encode"
        ) from exc


class _Parameters(NamedTuple):
    """The annotations stored arguments are decoded by."""

    positional: list[Any]
    rest: Any
    keywords: dict[str, Any]
    other_keywords: Any


def _find_parameters(fn: Callable[..., Any]) -> _Parameters:
    try:
        hints = typing.get_type_hints(fn)
        parameters = inspect.signature(fn).parameters.values()
    except Exception:  # unresolvable annotations or no signature: decode plain JSON
        return _Parameters([], Any, {}, Any)
    found = _Parameters([], Any, {}, Any)
    rest: Any = Any
    other: Any = Any
    for p in parameters:
        hint = hints.get(p.name, Any)
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            found.positional.append(hint)
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            found.keywords[p.name] = hint
        elif p.kind is p.VAR_POSITIONAL:
            rest = hint
        elif p.kind is p.VAR_KEYWORD:
            other = hint
    return found._replace(rest=rest, other_keywords=other)


_parameters = WeakCache(_find_parameters)


class _BoundArgs(msgspec.Struct, forbid_unknown_fields=True):
    args: list[msgspec.Raw]
    kwargs: dict[str, msgspec.Raw]


_args_decoder = msgspec.json.Decoder(list[msgspec.Raw] | _BoundArgs)


def decode_call(
    fn: Callable[..., Any], raw: msgspec.Raw
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """Decode stored arguments as ``fn``'s parameters are annotated.

    Returns:
        What to call, ``fn`` itself or a partial of it binding the stored
        keywords, and the positional arguments to call it with.

    Raises:
        msgspec.ValidationError: The stored arguments do not fit the annotations.
    """
    stored = _args_decoder.decode(raw)
    values = stored if isinstance(stored, list) else stored.args
    found = _parameters(fn)
    fixed = found.positional
    args = tuple(
        msgspec.json.decode(value, type=fixed[i] if i < len(fixed) else found.rest)
        for i, value in enumerate(values)
    )
    if isinstance(stored, list) or not stored.kwargs:
        return fn, args
    kwargs = {
        key: msgspec.json.decode(value, type=found.keywords.get(key, found.other_keywords))
        for key, value in stored.kwargs.items()
    }
    return functools.partial(fn, **kwargs), args
