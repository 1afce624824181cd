"""The task functions the PostgreSQL process tests run, and the ledger they write.

Every process of a test (workers and submitter) imports this module, so the
functions are registered under the same names everywhere and ``wait`` decodes
their results by the return annotation. A task writes one ledger row when its
function starts and stamps it when the function ends, with the database's clock
(``clock_timestamp()``), on a connection of its own in autocommit mode: a row is
committed before the function goes on, so a SIGKILL leaves at most an open
interval, never a start the parent cannot see.

Tables (created by :func:`create_tables`; every row carries the pool's name, so
tests share them):

    hp_ledger (pool, key, pid, started, ended)   one row per start of a function
    hp_acked  (pool, key, task_id)               submit returned task_id for key
    hp_result (pool, key, type, value)           wait returned a value of type
    hp_kill   (pool, pid, at)                    the parent SIGKILLed pid
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import anyio
import msgspec
import psycopg

import harnpool

#: The DSN of the database holding the ledger; every child gets it from the parent.
DSN_VARIABLE = "HARNPOOL_TEST_LEDGER_DSN"
#: How long a ledger write keeps trying while the server restarts.
RECONNECT_SECONDS = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hp_ledger (
    id bigserial PRIMARY KEY, pool text NOT NULL, key text NOT NULL, pid int NOT NULL,
    started timestamptz NOT NULL, ended timestamptz);
CREATE TABLE IF NOT EXISTS hp_acked (
    pool text NOT NULL, key text NOT NULL, task_id text NOT NULL, PRIMARY KEY (pool, key));
CREATE TABLE IF NOT EXISTS hp_result (
    pool text NOT NULL, key text NOT NULL, type text NOT NULL, value text NOT NULL);
CREATE TABLE IF NOT EXISTS hp_kill (pool text NOT NULL, pid int NOT NULL, at timestamptz NOT NULL);
"""


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """What ``work`` returns: typed, so wait() gives a Receipt back in any process."""

    key: str
    total: int
    tags: list[str]


def create_tables(dsn: str) -> None:
    """Create the ledger tables if they are missing."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(4242)")
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute("SELECT pg_advisory_unlock(4242)")


_local = threading.local()


def execute(query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Run one autocommit statement on this thread's ledger connection.

    A lost connection (the server restarted) is made again and the statement
    retried: a statement that failed with the connection was not committed,
    except for the rare commit whose reply was lost, which at worst repeats a
    ledger write the checker then counts against the pool.
    """
    deadline = time.monotonic() + RECONNECT_SECONDS
    while True:
        conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = _local.conn = psycopg.connect(os.environ[DSN_VARIABLE], autocommit=True)
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            if conn is not None:
                conn.close()
            _local.conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def note_start(pool: str, key: str) -> int:
    ((row_id,),) = execute(
        "INSERT INTO hp_ledger (pool, key, pid, started) VALUES (%s, %s, %s, clock_timestamp())"
        " RETURNING id",
        (pool, key, os.getpid()),
    )
    assert isinstance(row_id, int)
    return row_id


def note_end(row_id: int) -> None:
    execute("UPDATE hp_ledger SET ended = clock_timestamp() WHERE id = %s", (row_id,))


def total(key: str) -> int:
    """The number ``work`` computes for a key, so the checker knows every result."""
    return sum(key.encode()) * 7


@harnpool.task(name="tests.pg.work")
def work(pool: str, key: str, millis: int) -> Receipt:
    """A plain function: a worker thread runs it."""
    row_id = note_start(pool, key)
    time.sleep(millis / 1000)
    note_end(row_id)
    return Receipt(key=key, total=total(key), tags=[pool, "sync"])


@harnpool.task(name="tests.pg.work_async")
async def work_async(pool: str, key: str, millis: int) -> dict[str, int]:
    """An async function: the worker's event loop runs it."""
    row_id = await anyio.to_thread.run_sync(note_start, pool, key)
    await anyio.sleep(millis / 1000)
    await anyio.to_thread.run_sync(note_end, row_id)
    return {"total": total(key), "millis": millis}


def millis(index: int) -> int:
    """How long task ``index`` takes: 60 to 300 ms, fixed by its number."""
    return 60 + (index * 37 % 5) * 60


def function_for(index: int) -> Any:
    """``work`` for even tasks, ``work_async`` for odd ones."""
    return work if index % 2 == 0 else work_async


def expected(pool: str, key: str, index: int) -> object:
    """What wait() must return for task ``index`` of ``pool``, submitted under ``key``."""
    if index % 2 == 0:
        return Receipt(key=key, total=total(key), tags=[pool, "sync"])
    return {"total": total(key), "millis": millis(index)}


def index(key: str) -> int:
    """The number of the task submitted under ``key`` (``<pool>-<index>``)."""
    return int(key.rsplit("-", 1)[1])
