"""A throwaway PostgreSQL server for the benchmarks, durable like the journal.

The server is initialised into a fresh directory on a real disk, listens on a
unix socket in that directory only, and runs with ``fsync=on``,
``synchronous_commit=on`` and ``full_page_writes=on`` (PostgreSQL's defaults):
a commit returns once its WAL is flushed, as a journal batch returns once it is
fdatasynced. ``initdb`` refuses to run as root, so as root the server runs as
the ``postgres`` user through ``runuser``. It is stopped and removed when the
block ends.

Debian installs the binaries under ``/usr/lib/postgresql/<version>/bin``, off
``PATH``; without them :class:`ServerUnavailable` says so.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

_ROLE = "harn"


class ServerUnavailable(Exception):
    """No server can be started here; the reason says why."""


def find_bindir() -> str:
    """The newest installed server's binary directory.

    Raises:
        ServerUnavailable: No ``initdb`` was found.
    """

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path))

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which("initdb")
    if on_path is not None:
        return os.path.dirname(on_path)
    raise ServerUnavailable(
        "PostgreSQL's server binaries were not found (no /usr/lib/postgresql/*/bin/initdb and "
        "no initdb on PATH): install the postgresql package"
    )


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
        return _uri(make_conninfo(self.admin_dsn, dbname=name))

    def drop_database(self, dsn: str) -> None:
        """Drop a database made by :meth:`create_database`, closing its connections."""
        name = conninfo_to_dict(dsn)["dbname"]
        assert isinstance(name, str)
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _uri(dsn: str) -> str:
    """``dsn`` as a URI: asyncpg takes no key=value strings."""
    parts = conninfo_to_dict(dsn)
    user = quote(str(parts.pop("user", "")), safe="")
    password = parts.pop("password", None)
    if password is not None:
        user += ":" + quote(str(password), safe="")
    database = quote(str(parts.pop("dbname", "")), safe="")
    query = urlencode({k: str(v) for k, v in parts.items()})
    return f"postgresql://{user}@/{database}?{query}"


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


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerUnavailable(
            "running as root, and initdb refuses root, but there is no postgres user"
        ) from None
    return ["runuser", "-u", "postgres", "--"]


def _run(command: list[str], what: str, log: str | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = done.stdout + done.stderr
        if log is not None and os.path.exists(log):
            with open(log, encoding="utf-8", errors="replace") as f:
                detail += f.read()
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{detail}")


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
    bindir = find_bindir()
    prefix = _as_server_user()
    # Short, under /tmp: a unix socket's path may be at most 107 bytes.
    directory = tempfile.mkdtemp(prefix="hp-bench-pg.", dir="/tmp")
    data, log = os.path.join(directory, "data"), os.path.join(directory, "server.log")
    pg_ctl = [*prefix, os.path.join(bindir, "pg_ctl"), "-D", data, "-w", "-s"]
    started = False
    try:
        if prefix:
            shutil.chown(directory, user="postgres", group="postgres")
        began = time.perf_counter()
        initdb = [os.path.join(bindir, "initdb"), "-D", data, "-U", _ROLE, "-A", "trust"]
        # --no-sync: the empty cluster need not reach the disk; every commit after it does.
        _run([*prefix, *initdb, "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], "initdb")
        options = (
            f"-k {directory} -c listen_addresses='' -c fsync=on -c synchronous_commit=on"
            " -c full_page_writes=on -c max_connections=200"
        )
        _run([*pg_ctl, "-l", log, "-o", options, "start"], "pg_ctl start", log)
        started = True
        server = _describe(f"postgresql://{_ROLE}@/postgres?host={directory}", data)
        server.settings["start_seconds"] = f"{time.perf_counter() - began:.2f}"
        yield server
    finally:
        if started:
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(directory, ignore_errors=True)
