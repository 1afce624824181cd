"""A storage that keeps a pool's tasks in memory: for tests, and as the smallest example of one.

Nothing survives the process, but the data outlives each pool: open the same
:class:`MemoryStorage` again and it recovers what the last pool left, as a
journal would, with tasks that were ``running`` queued again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import anyio
import anyio.lowlevel
import msgspec

from ._errors import JournalLockedError, JournalWriteError, PoolClosedError
from ._records import FINISHED, Status, TaskRecord
from ._storage import ALL_ON_FULL, ALL_STRATEGIES, Found

__all__ = ["MemoryStorage"]


class MemoryBatch:
    """Records committed together: durable once :meth:`MemoryStorage.run` took them."""

    __slots__ = ("_done", "_error", "durable", "on_durable", "records")

    def __init__(self) -> None:
        self.records: list[TaskRecord] = []
        self._done = anyio.Event()
        self._error: JournalWriteError | PoolClosedError | None = None
        self.durable = False
        self.on_durable: list[Callable[[], object]] = []

    def finish(self, error: JournalWriteError | PoolClosedError | None) -> BaseException | None:
        """Wake the waiters, and run the callbacks if durable; return what a callback raised."""
        self._error = error
        self._done.set()
        callbacks, self.on_durable = self.on_durable, []
        if error is not None or self.durable:
            return None
        self.durable = True
        failure: BaseException | None = None
        for callback in callbacks:
            try:
                callback()
            except BaseException as exc:  # every callback runs, so no waiter is forgotten
                failure = failure or exc
        return failure

    async def wait(self) -> None:
        await self._done.wait()
        if self._error is not None:
            raise self._error


class MemoryStorage:
    """A pool's tasks in a dict, owned by one pool at a time.

    Supports every strategy and ``on_full`` policy. Records must encode as
    JSON, as a journal's must, so a pool behaves the same on both.

    Args:
        name: What messages and events call it.
    """

    strategies = ALL_STRATEGIES
    on_full = ALL_ON_FULL

    def __init__(self, name: str = "memory") -> None:
        self._name = name
        #: Every task's latest committed record, by id, in submission order.
        self.records: dict[str, TaskRecord] = {}
        self._counter = 0
        self._owned = False
        self._opened = False
        self._encoder = msgspec.json.Encoder()
        self.error: JournalWriteError | None = None
        self.on_failure: Callable[[JournalWriteError], None] | None = None
        self.flushes = 0
        self.compactions = 0  # nothing to compact: records are replaced in place

    @property
    def path(self) -> str:
        return self._name

    async def open(
        self,
        *,
        max_concurrent: int,
        strategy: str,
        keep_finished: int | None,
        keep_finished_for: float | None,
    ) -> Found:
        if self._owned:
            raise JournalLockedError(path=self._name, lock_path=self._name, pid=os.getpid())
        self._owned = True
        created, self._opened = not self._opened, True
        self._pending = MemoryBatch()
        self._wakeup = anyio.Event()
        self._stopping = self._stopped = False
        self.error = None
        self.flushes = 0  # counted per pool, as a journal's are
        interrupted: list[str] = []
        for record in self.records.values():
            if record.status is Status.RUNNING:
                interrupted.append(record.id)
                self.records[record.id] = msgspec.structs.replace(
                    record, status=Status.QUEUED, started_at=None, recoveries=record.recoveries + 1
                )
        dropped = self._retain(keep_finished, keep_finished_for)
        return Found(
            path=self._name,
            created=created,
            counter=self._counter,
            tasks=list(self.records.values()),
            interrupted=interrupted,
            dropped=dropped,
        )

    def _retain(self, keep: int | None, keep_for: float | None) -> int:
        if keep is None and keep_for is None:
            return 0
        finished = sorted(
            (r for r in self.records.values() if r.status in FINISHED),
            key=lambda r: (r.finished_at or 0.0, r.seq),
            reverse=True,
        )
        kept = finished if keep is None else finished[:keep]
        if keep_for is not None:
            cutoff = time.time() - keep_for
            kept = [r for r in kept if (r.finished_at or 0.0) >= cutoff]
        dropped = {r.id for r in finished} - {r.id for r in kept}
        for task_id in dropped:
            del self.records[task_id]
        return len(dropped)

    def append(self, record: TaskRecord) -> MemoryBatch:
        batch = self._pending
        if self.error is None and not self._stopped:
            self._encoder.encode(record)  # what a journal could not store, this refuses too
            batch.records.append(record)
            self._wakeup.set()
        return batch

    def forget(self, task_id: str) -> None:
        self.records.pop(task_id, None)

    async def run(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                while True:
                    if not self._wakeup.is_set():
                        await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    if self._pending.records:
                        await anyio.lowlevel.checkpoint()  # what appends meanwhile joins the batch
                        self._commit()
                    if self._stopping or self.error is not None:
                        return
            finally:
                self._stopped = True
                if self.error is None:
                    self._pending.finish(
                        PoolClosedError(
                            f"the pool on {self._name!r} closed before a record was stored"
                        )
                    )

    def _commit(self) -> None:
        batch, self._pending = self._pending, MemoryBatch()
        for record in batch.records:
            self.records[record.id] = record
            self._counter = max(self._counter, record.seq)
        self.flushes += 1
        failure = batch.finish(None)
        if failure is not None:
            self.fail(failure)

    def fail(self, exc: BaseException) -> None:
        """Stop storing, as a journal whose write failed: every pending and later record fails."""
        if self.error is not None:
            return
        error = JournalWriteError(
            f"storing in {self._name!r} failed ({type(exc).__qualname__}: {exc}); "
            "the pool has stopped",
            path=self._name,
            cause=exc,
        )
        error.__cause__ = exc
        self.error = error
        self._pending.finish(error)
        self._wakeup.set()
        if self.on_failure is not None:
            self.on_failure(error)

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    async def flush(self) -> None:
        if self._pending.records or self.error is not None:
            await self._pending.wait()

    async def aclose(self) -> None:
        self._owned = False
