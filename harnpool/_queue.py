"""The ready queue: higher priority first, then FIFO by submission sequence."""

from __future__ import annotations

import heapq
from collections import deque
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["ReadyQueue"]

T = TypeVar("T")


class ReadyQueue(Generic[T]):
    """A priority queue that workers wait on.

    Items are ordered by ``(-priority, seq)``; ``seq`` is unique per pool, so
    items themselves are never compared.
    """

    __slots__ = ("_heap", "_waiters")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, T]] = []
        self._waiters: deque[anyio.Event] = deque()

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, item: T, *, priority: int, seq: int) -> None:
        """Add ``item``; wake one waiting worker if any."""
        heapq.heappush(self._heap, (-priority, seq, item))
        if self._waiters:
            self._waiters.popleft().set()

    async def get(self) -> T:
        """Remove and return the first item, waiting for one if the queue is empty.

        Always yields to the event loop once, so a worker whose tasks never
        suspend still lets the rest of the program run.
        """
        if self._heap:
            await anyio.lowlevel.checkpoint()
        while not self._heap:
            event = anyio.Event()
            self._waiters.append(event)
            try:
                await event.wait()
            except BaseException:
                if event.is_set():
                    # We were woken for an item we will not take: pass it on.
                    if self._heap and self._waiters:
                        self._waiters.popleft().set()
                else:
                    self._waiters.remove(event)
                raise
        return heapq.heappop(self._heap)[2]
