"""The running event loop: reached from other threads, and the cheapest primitives it offers.

The pool picks its primitives once, when it opens, from the event loop it runs
on: on asyncio, one-shot events built on loop futures and ``asyncio.sleep(0)``
(no backend lookup, no per-call cancel scope), on trio anyio's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import anyio.lowlevel

__all__ = ["ANYIO", "Primitives", "Signal", "on_asyncio", "primitives", "threadsafe_caller"]


class Signal(Protocol):
    """A one-shot event: set once, waited for by any number of tasks."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> None: ...


def on_asyncio() -> bool:
    """Whether the calling code runs in an asyncio task (not trio, not trio's guest mode)."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no asyncio loop running
        return False


def threadsafe_caller() -> Callable[[Callable[[], object]], object]:
    """Return a function that runs a callback on this event loop, callable from any thread."""
    if on_asyncio():
        return asyncio.get_running_loop().call_soon_threadsafe
    import trio

    return trio.lowlevel.current_trio_token().run_sync_soon


class _Flag:
    """A one-shot event on asyncio: one loop future per waiter, woken together by :meth:`set`.

    Each waiter awaits a future of its own, so a cancelled waiter cancels only
    its own future and never wakes or fails another.
    """

    __slots__ = ("_loop", "_set", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        if waiters:
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        future = self._loop.create_future()
        if self._waiters is None:
            self._waiters = [future]
        else:
            self._waiters.append(future)
        try:
            await future
        except BaseException:
            if self._waiters is not None:  # not set meanwhile: forget the cancelled waiter
                self._waiters.remove(future)
            raise


class Primitives:
    """The event and checkpoint a pool uses, chosen for its event loop."""

    __slots__ = ("checkpoint", "event")

    def __init__(
        self, event: Callable[[], Signal], checkpoint: Callable[[], Awaitable[None]]
    ) -> None:
        #: Makes a new :class:`Signal`.
        self.event = event
        #: Yields to the event loop once (and lets a pending cancellation in).
        self.checkpoint = checkpoint


def _asyncio_checkpoint() -> Awaitable[None]:
    return asyncio.sleep(0)


#: anyio's primitives, for trio (and anywhere the loop is not known yet).
ANYIO = Primitives(anyio.Event, anyio.lowlevel.checkpoint)


def primitives() -> Primitives:
    """Return the primitives for the event loop running the caller."""
    if not on_asyncio():
        return ANYIO
    loop = asyncio.get_running_loop()
    return Primitives(lambda: _Flag(loop), _asyncio_checkpoint)
