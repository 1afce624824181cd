"""TEMPORARY: a minimal open_pool over PostgresStore, until the public API takes a DSN."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, get_type_hints

import anyio
import msgspec

from harnpool._errors import DatabaseError
from harnpool._pg import PostgresStore
from harnpool._records import FINISHED, Status, TaskRecord
from harnpool._registry import decode_args, encode_args, lookup, registered_name


class StandInPool:
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def submit(self, fn: Any, *args: Any, key: str) -> str:
        name = registered_name(fn)
        record = TaskRecord(
            id="", seq=0, status=Status.QUEUED, submitted_at=0.0, key=key, name=name,
            function=name, args=encode_args(fn, args),
        )  # fmt: skip
        (stored,) = await anyio.to_thread.run_sync(self.store.submit, [record])
        return stored.id

    async def wait(self, task_id: str) -> Any:
        while True:
            try:
                record = await anyio.to_thread.run_sync(self.store.get, task_id)
            except DatabaseError:
                record = None
            if record is not None and record.status in FINISHED:
                break
            await anyio.sleep(0.05)
        assert record.status is Status.COMPLETED, record
        assert record.name is not None
        fn = lookup(record.name)
        assert fn is not None and not isinstance(record.result, msgspec.UnsetType)
        return msgspec.json.decode(record.result, type=get_type_hints(fn)["return"])


def _retrying(call: Any, *args: Any, **kwargs: Any) -> Any:
    while True:
        try:
            return call(*args, **kwargs)
        except DatabaseError:
            time.sleep(0.1)


@contextlib.asynccontextmanager
async def open_pool(
    dsn: str, *, name: str, max_concurrent: int, workers: int, lease: float
) -> AsyncIterator[StandInPool]:
    store = PostgresStore.connect(dsn, name, connections=workers + 4)
    store.migrate()
    owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    running: set[str] = set()
    lock = threading.Lock()

    def run(record: TaskRecord) -> None:
        assert record.name is not None and not isinstance(record.args, msgspec.UnsetType)
        fn = lookup(record.name)
        assert fn is not None
        args = decode_args(fn, record.args)
        if getattr(fn, "__code__", None) and fn.__code__.co_flags & 0x80:
            result = anyio.run(fn, *args)
        else:
            result = fn(*args)
        done = msgspec.structs.replace(
            record, status=Status.COMPLETED, result=msgspec.Raw(msgspec.json.encode(result))
        )
        _retrying(store.finish, done, owner=owner)
        with lock:
            running.discard(record.id)

    def renew() -> None:
        while True:
            time.sleep(lease / 3)
            with contextlib.suppress(DatabaseError):
                store.renew(owner, lease=lease)

    def claim() -> None:
        listener = None
        while True:
            with lock:
                free = workers - len(running)
            if free > 0:
                try:
                    started = store.claim(
                        owner, limit=free, lease=lease, max_concurrent=max_concurrent,
                        max_recoveries=5,
                    ).started  # fmt: skip
                except DatabaseError:
                    started = []
                for record in started:
                    with lock:
                        running.add(record.id)
                    threading.Thread(target=run, args=(record,), daemon=True).start()
            try:
                if listener is None:
                    listener = store.listen()
                listener.wait(0.2)
            except DatabaseError:
                listener = None
                time.sleep(0.1)

    if workers:
        threading.Thread(target=renew, daemon=True).start()
        threading.Thread(target=claim, daemon=True).start()
    yield StandInPool(store)
