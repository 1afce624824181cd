"""A cache keyed weakly by the callables it describes, so it never keeps them alive."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["WeakCache"]

K = TypeVar("K")
V = TypeVar("V")


class WeakCache(Generic[K, V]):
    """Call ``compute(key)`` once per live key and remember the answer.

    An entry goes when its key is collected: a user's function, closure or
    bound method (and the object behind it) is never kept alive by harnpool
    once nothing else refers to it. A key that cannot be weakly referenced or
    hashed is computed every time. The values must not refer to their key.
    """

    __slots__ = ("_compute", "_entries")

    def __init__(self, compute: Callable[[K], V]) -> None:
        self._compute = compute
        self._entries: weakref.WeakKeyDictionary[K, V] = weakref.WeakKeyDictionary()

    def __call__(self, key: K) -> V:
        try:
            return self._entries[key]
        except KeyError:
            pass
        except TypeError:  # not weakly referenceable, or unhashable
            return self._compute(key)
        value = self._compute(key)
        self._entries[key] = value
        return value

    def __len__(self) -> int:
        return len(self._entries)
