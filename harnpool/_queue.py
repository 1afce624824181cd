"""The ready queue and its strategies.

``priority`` (the default) runs higher priority first, then FIFO by submission
sequence; ``fifo`` and ``lifo`` ignore priority; ``fair`` round-robins between
``group`` labels, each group ordered by priority then sequence, so one busy
tenant cannot starve the others. ``aging`` (seconds) raises a queued task's
effective priority by one for every ``aging`` seconds it has waited, so a
low-priority task cannot wait forever; since every task ages at the same rate
this is the fixed key ``submitted_at / aging - priority``.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import Generic, Literal, Protocol, TypeVar

from ._loop import ANYIO, Primitives, Signal

__all__ = ["STRATEGIES", "Queued", "ReadyQueue", "Strategy"]

Strategy = Literal["priority", "fifo", "lifo", "fair"]
STRATEGIES: tuple[Strategy, ...] = ("priority", "fifo", "lifo", "fair")


class Queued(Protocol):
    """What the queue needs to know of an item."""

    @property
    def priority(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def submitted_at(self) -> float: ...
    @property
    def group(self) -> str | None: ...


T = TypeVar("T", bound=Queued)
_Key = tuple[float, int]


def _key_function(strategy: Strategy, aging: float | None) -> Callable[[Queued], _Key]:
    if strategy == "fifo":
        return lambda item: (0, item.seq)
    if strategy == "lifo":
        return lambda item: (0, -item.seq)
    if aging is not None:
        rate = 1.0 / aging
        return lambda item: (item.submitted_at * rate - item.priority, item.seq)
    return lambda item: (-item.priority, item.seq)


class ReadyQueue(Generic[T]):
    """The tasks ready to run, in the order a strategy gives; workers wait on it.

    Keys are unique (they end in the pool-unique ``seq``), so items themselves
    are never compared.
    """

    def __init__(
        self,
        strategy: Strategy = "priority",
        *,
        aging: float | None = None,
        prims: Primitives = ANYIO,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        if aging is not None and aging <= 0:
            raise ValueError(f"aging must be a positive number of seconds, not {aging}")
        self._key = _key_function(strategy, aging)
        self._fair = strategy == "fair"
        # One heap per group; without "fair" there is only the group None.
        self._heaps: dict[str | None, list[tuple[_Key, T]]] = {}
        self._turns: deque[str | None] = deque()  # groups with items, in round-robin order
        self._size = 0
        self._waiters: deque[Signal] = deque()
        self._event = prims.event
        self._checkpoint = prims.checkpoint
        self._claims = 0

    def __len__(self) -> int:
        return self._size

    @property
    def claimed(self) -> int:
        """How many getters are about to take an item: woken for one, or at the
        checkpoint :meth:`get` passes before taking one that was there already."""
        return self._claims

    def _wake(self) -> None:
        self._waiters.popleft().set()
        self._claims += 1

    def put(self, item: T) -> None:
        """Add ``item``; wake one waiting worker if any."""
        group = item.group if self._fair else None
        heap = self._heaps.get(group)
        if heap is None:
            heap = self._heaps[group] = []
        if not heap:
            self._turns.append(group)
        heapq.heappush(heap, (self._key(item), item))
        self._size += 1
        if self._waiters:
            self._wake()

    def _pop(self) -> T:
        group = self._turns.popleft()
        heap = self._heaps[group]
        item = heapq.heappop(heap)[1]
        if heap:
            self._turns.append(group)
        else:
            del self._heaps[group]
        self._size -= 1
        return item

    async def get(self) -> T:
        """Remove and return the next item, waiting for one if the queue is empty.

        Always yields to the event loop once, so a worker whose tasks never
        suspend still lets the rest of the program run.
        """
        if self._size:
            self._claims += 1
            try:
                await self._checkpoint()
            finally:
                self._claims -= 1
        while not self._size:
            event = self._event()
            self._waiters.append(event)
            try:
                await event.wait()
            except BaseException:
                if event.is_set():
                    self._claims -= 1
                    # We were woken for an item we will not take: pass it on.
                    if len(self) and self._waiters:
                        self._wake()
                else:
                    self._waiters.remove(event)
                raise
            self._claims -= 1
        return self._pop()
