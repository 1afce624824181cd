"""A child process for test_postgres_store's claim race: it claims and finishes tasks in a loop.

Usage: ``python _pg_claimer.py DSN POOL LEDGER_TABLE PEERS``

It waits until PEERS claimers have checked in (so they really race), then claims
one task at a time under ``max_concurrent=1`` and, between claim and finish,
writes the task's start and end times (the database's clock) to the ledger
table. While the other claimer holds the slot it waits for a notification. It
stops once the pool has no queued or running task.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import msgspec
import psycopg
from psycopg import sql

from harnpool._pg import PostgresStore
from harnpool._records import Status


def main(dsn: str, pool: str, ledger: str, peers: int) -> None:
    owner = f"{socket.gethostname()}:{os.getpid()}"
    table = sql.Identifier(ledger)
    with (
        PostgresStore.connect(dsn, pool, connections=1) as store,
        store.listen() as listener,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        conn.execute(
            sql.SQL("INSERT INTO {} (task, owner) VALUES ('ready', %s)").format(table), (owner,)
        )
        deadline = time.monotonic() + 30
        while True:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE task = 'ready'").format(table)
            ).fetchone()
            if row is not None and row[0] >= peers:
                break
            if time.monotonic() > deadline:
                raise SystemExit("the other claimers never checked in")
        while True:
            started = store.claim(owner, limit=1, lease=30, max_concurrent=1).started
            if not started:
                counts = store.statistics()
                if counts[Status.QUEUED] == 0 and counts[Status.RUNNING] == 0:
                    return
                # The other claimer holds the only slot: wait for it to finish one.
                listener.wait(0.1)
                continue
            (record,) = started
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (task, owner, started) VALUES (%s, %s, clock_timestamp())"
                ).format(table),
                (record.id, owner),
            )
            conn.execute(
                sql.SQL("UPDATE {} SET ended = clock_timestamp() WHERE task = %s").format(table),
                (record.id,),
            )
            done = msgspec.structs.replace(
                record, status=Status.COMPLETED, result=msgspec.Raw(b"1")
            )
            if store.finish(done, owner=owner) is None:
                raise SystemExit(f"{record.id} was taken from {owner}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
