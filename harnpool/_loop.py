"""The running event loop, reached from other threads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["threadsafe_caller"]


def threadsafe_caller() -> Callable[[Callable[[], object]], object]:
    """Return a function that runs a callback on this event loop, callable from any thread."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:  # no asyncio loop: anyio runs on trio
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
