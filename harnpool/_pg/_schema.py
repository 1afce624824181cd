"""The PostgreSQL schema: its migrations and the statement that applies them.

Every pool in a database shares two tables. ``harnpool_pool`` has a row per
pool name. ``harnpool_task`` has a row per task, carrying what a journal's
:class:`~harnpool._records.TaskRecord` carries, plus what sharing a pool among
processes needs: the owner running a task, until when its lease holds, how
many times a lost lease interrupted it, and whether cancelling it was asked.

Migrations only ever add: version ``n`` is ``MIGRATIONS[n - 1]``, and a
database records every version applied in ``harnpool_schema``. A database with
a version newer than :data:`SCHEMA_VERSION` is refused, untouched.
"""

from __future__ import annotations

import psycopg

from .._errors import SchemaVersionError

__all__ = ["LOCK_CLASS", "MIGRATIONS", "SCHEMA_VERSION", "migrate"]

#: The first key of harnpool's two-key advisory locks, so they cannot meet
#: another application's (the second key is a pool name's hash, or 0 to migrate).
LOCK_CLASS = 0x68706F6C
#: The second key of the lock migrations take.
_MIGRATION_LOCK = 0

MIGRATIONS: tuple[str, ...] = (
    # 1: pools and tasks.
    """
    CREATE TABLE harnpool_pool (
        name text PRIMARY KEY,
        created_at timestamptz NOT NULL DEFAULT statement_timestamp()
    );

    CREATE TABLE harnpool_task (
        -- One sequence for every pool: a task's id is 't' || seq, and seq is
        -- the FIFO tie-break among equal priorities.
        seq bigserial PRIMARY KEY,
        pool text NOT NULL,
        key text,
        status text NOT NULL CHECK (status IN
            ('queued', 'running', 'completed', 'failed', 'rejected', 'cancelled')),
        priority bigint NOT NULL DEFAULT 0,
        -- Starts, counting the runs a lost lease interrupted.
        attempts integer NOT NULL DEFAULT 0,
        -- Runs a lost lease interrupted (the owner died or lost the database).
        recoveries integer NOT NULL DEFAULT 0,
        retries integer NOT NULL DEFAULT 0,
        retry_on text[],
        timeout double precision,
        not_before timestamptz,
        task_group text,
        function text,
        name text,
        -- msgspec's JSON as text, byte for byte: jsonb would reorder keys, drop
        -- duplicates and reformat numbers, so a typed decode could differ from
        -- the journal's, and it would parse every value on the way in.
        args text,
        result text,
        error_type text,
        error_message text,
        reason text,
        -- Every time is the database's clock, so hosts' clocks need not agree.
        submitted_at timestamptz NOT NULL,
        started_at timestamptz,
        finished_at timestamptz,
        owner text,
        lease_until timestamptz,
        cancel_requested boolean NOT NULL DEFAULT false,
        -- Not partial: a key that finished is never run again.
        CONSTRAINT harnpool_task_pool_key UNIQUE (pool, key),
        CONSTRAINT harnpool_task_lease CHECK
            ((status = 'running') = (owner IS NOT NULL AND lease_until IS NOT NULL))
    );

    -- The ready queue, in claim order.
    CREATE INDEX harnpool_task_ready ON harnpool_task (pool, priority DESC, seq)
        WHERE status = 'queued';
    -- Running tasks: counted against the limit, renewed, reclaimed when expired.
    CREATE INDEX harnpool_task_leases ON harnpool_task (pool, lease_until)
        WHERE status = 'running';
    -- Counts by status.
    CREATE INDEX harnpool_task_pool_status ON harnpool_task (pool, status);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """The database's schema version: 0 when harnpool never migrated it."""
    exists = conn.execute("SELECT to_regclass('harnpool_schema') IS NOT NULL").fetchone()
    if exists is None or not exists[0]:
        return 0
    found = conn.execute("SELECT coalesce(max(version), 0) FROM harnpool_schema").fetchone()
    assert found is not None
    version = found[0]
    assert isinstance(version, int)
    return version


def migrate(conn: psycopg.Connection[tuple[object, ...]], pool: str) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION` in one transaction, and add ``pool``'s row.

    Processes migrating at once queue on an advisory lock: the first applies
    the migrations, the others find them applied.

    Returns:
        The schema version the database had before.

    Raises:
        SchemaVersionError: The database's schema is newer; nothing was changed.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, _MIGRATION_LOCK))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS harnpool_schema ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT statement_timestamp())"
        )
        found = schema_version(conn)
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(pool=pool, found=found, supported=SCHEMA_VERSION)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            conn.execute(MIGRATIONS[version - 1])
            conn.execute("INSERT INTO harnpool_schema (version) VALUES (%s)", (version,))
        conn.execute(
            "INSERT INTO harnpool_pool (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (pool,)
        )
    return found
