"""A throwaway PostgreSQL server for the benchmarks, durable like the journal.

The server (started by the tests' :func:`tests.postgres_server.cluster`, so both
start one the same way) is initialised into a fresh directory on a real disk,
listens on a unix socket in that directory only, and runs with ``fsync=on``,
``synchronous_commit=on`` and ``full_page_writes=on`` (PostgreSQL's defaults):
a commit returns once its WAL is flushed, as a journal batch returns once it is
fdatasynced. It is stopped and removed when the block ends.

Debian installs the binaries under ``/usr/lib/postgresql/<version>/bin``, off
``PATH``; without them :class:`ServerUnavailable` says so.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.postgres_server import ServerUnavailable, as_url, cluster, find_bindir

__all__ = ["Server", "ServerUnavailable", "find_bindir", "running_server"]


@dataclass
class Server:
    """A running server: a DSN to its ``postgres`` database, as an administrator."""

    admin_dsn: str
    #: The server's settings that decide durability, as it reports them.
    settings: dict[str, str]
    version: str
    data_directory: str | None = None

    def create_database(self) -> str:
        """Create an empty database and return a DSN to it."""
        name = f"bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return as_url(make_conninfo(self.admin_dsn, dbname=name))

    def drop_database(self, dsn: str) -> None:
        """Drop a database made by :meth:`create_database`, closing its connections."""
        name = conninfo_to_dict(dsn)["dbname"]
        assert isinstance(name, str)
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _describe(admin_dsn: str, data_directory: str | None) -> Server:
    names = (
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_sync_method",
        "max_connections",
    )
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = any(%s)", (list(names),)
        ).fetchall()
        version = conn.execute("SHOW server_version").fetchone()
    return Server(
        admin_dsn=admin_dsn,
        settings=dict(rows),
        version="" if version is None else str(version[0]),
        data_directory=data_directory,
    )


@contextlib.contextmanager
def running_server(admin_dsn: str | None = None) -> Iterator[Server]:
    """Start a durable throwaway server for the block, or use the one ``admin_dsn`` names.

    Args:
        admin_dsn: An existing server to use as it is (its settings are reported,
            not changed); the benchmark creates and drops databases on it.

    Raises:
        ServerUnavailable: The binaries are missing.
    """
    if admin_dsn is not None:
        yield _describe(admin_dsn, None)
        return
    with cluster(durable=True, prefix="hp-bench-pg.") as (directory, _, admin_dsn, seconds):
        server = _describe(admin_dsn, f"{directory}/data")
        server.settings["start_seconds"] = f"{seconds:.2f}"
        yield server
