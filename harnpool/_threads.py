"""Which thread may call a pool (its event loop's for :class:`Pool`, any other for a
BlockingPool), and how many threads its plain functions may run in.

A pool's state is only ever touched on its event loop's thread, so it needs no
locks. A call from another thread would change that state under the loop's feet
and then wait on an event bound to no loop or to the wrong one, which hangs or
fails far from the cause; these checks refuse it up front with
:class:`WrongThreadError`. They cost one ``threading.get_ident()`` each.
"""

from __future__ import annotations

import threading

import anyio.to_thread

from ._errors import WrongThreadError

__all__ = ["check_loop_thread", "check_not_loop_thread", "thread_slots"]


def thread_slots(limit: int) -> int:
    """How many threads a pool's plain functions may run in at once: ``limit``, but no
    more than anyio's default thread limiter allows (40 unless changed).

    Read once, on the event loop, when the pool opens. The pool takes a limiter
    of that size of its own rather than the default one, so plain task
    functions holding every token cannot starve the pool's own calls in
    threads (a lease renewal, a journal open).
    """
    default = anyio.to_thread.current_default_thread_limiter().total_tokens
    return max(1, int(min(limit, default)))


def _thread_name(ident: int) -> str:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return f"thread {ident}"


def check_loop_thread(loop_thread: int, *, pool: str, method: str) -> None:
    """Refuse a call to a :class:`Pool` from a thread other than its event loop's.

    Args:
        loop_thread: ``threading.get_ident()`` of the thread the pool's event
            loop runs on, taken when the pool was made.
        pool: The journal's path, for the message.
        method: What was called, e.g. ``"Pool.submit"``.

    Raises:
        WrongThreadError: The calling thread is not ``loop_thread``.
    """
    if threading.get_ident() == loop_thread:
        return
    thread = threading.current_thread().name
    raise WrongThreadError(
        f"{method} was called from thread {thread!r}, but the pool on {pool!r} belongs to "
        f"the event loop on thread {_thread_name(loop_thread)!r} and is not thread-safe: "
        "from sync code or another thread, open the pool with harnpool.open_blocking_pool() "
        "and call its BlockingPool, or hand the call to the pool's event loop with "
        "anyio.from_thread.run() (from a task function's worker thread) or an anyio "
        "BlockingPortal",
        pool=pool,
        method=method,
        thread=thread,
    )


def check_not_loop_thread(loop_thread: int, *, pool: str, method: str) -> None:
    """Refuse a blocking call made on the event loop thread that would have to answer it.

    Args:
        loop_thread: ``threading.get_ident()`` of the thread the pool's event
            loop runs on.
        pool: The journal's path, for the message.
        method: What was called, e.g. ``"BlockingPool.submit"``.

    Raises:
        WrongThreadError: The calling thread is ``loop_thread``: the call
            would block the loop it waits for, forever.
    """
    if threading.get_ident() != loop_thread:
        return
    thread = threading.current_thread().name
    raise WrongThreadError(
        f"{method} was called on thread {thread!r}, which runs the event loop of the pool "
        f"on {pool!r}: it would block the very loop that must answer it. Call it from "
        "another thread; a task function that needs it can be a plain function, which "
        "runs in a worker thread",
        pool=pool,
        method=method,
        thread=thread,
    )
