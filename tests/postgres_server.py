"""A throwaway PostgreSQL server for the tests, or an existing one named by ``HARNPOOL_PG_DSN``.

The server is initialised into a fresh temporary directory, listens on a unix
socket in that directory only (no TCP port to collide with), runs with
``fsync=off``, and is stopped and removed when the session ends, whether or not
the tests passed. ``initdb`` refuses to run as root, so as root the server runs
as the ``postgres`` user through ``runuser``.

Debian installs the server binaries under ``/usr/lib/postgresql/<version>/bin``,
off ``PATH``; ``.ci/run`` installs the ``postgresql`` package when they are
missing. Without them the PostgreSQL tests are skipped, except under CI
(``CI=true``), where a missing server is a failure, never a silent skip.
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
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

DSN_VARIABLE = "HARNPOOL_PG_DSN"
_ROLE = "harn"


def as_url(dsn: str) -> str:
    """A libpq DSN as a ``postgresql://`` URI: what ``open_pool`` takes for a database."""
    params = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items()}
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    auth = user + ("" if password is None else ":" + quote(password, safe=""))
    dbname = quote(params.pop("dbname", ""), safe="")
    query = urlencode(params)
    return f"postgresql://{auth}@/{dbname}" + (f"?{query}" if query else "")


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
        "no initdb on PATH): install the postgresql package, or name a running server"
        f" ({DSN_VARIABLE} for the tests, --admin-dsn for the benchmarks)"
    )


@dataclass
class Server:
    """A running server and the databases created on it."""

    #: A DSN to the server's ``postgres`` database, as an administrator.
    admin_dsn: str
    #: The temporary directory of a server started here; None for an existing server.
    directory: str | None = None
    bindir: str | None = None
    #: How long initdb and the start took, in seconds.
    start_seconds: float = 0.0
    created: list[str] = field(default_factory=list)

    def create_database(self) -> str:
        """Create an empty database and return a DSN to it."""
        name = f"harnpool_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        return make_conninfo(self.admin_dsn, dbname=name)

    def drop_database(self, dsn: str) -> None:
        """Drop a database made by :meth:`create_database`, closing its connections."""
        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        assert isinstance(name, str)
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        self.created.remove(name)


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerUnavailable(
            "running as root, and initdb refuses root, but there is no postgres user to run "
            "the server as"
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
def running_server() -> Iterator[Server]:
    """Start a throwaway server (or use ``HARNPOOL_PG_DSN``'s) for the block.

    Raises:
        ServerUnavailable: The binaries are missing and no DSN was given.
    """
    external = os.environ.get(DSN_VARIABLE)
    if external:
        server = Server(admin_dsn=external)
        try:
            yield server
        finally:
            for name in list(server.created):
                server.drop_database(make_conninfo(external, dbname=name))
        return
    with cluster(durable=False, prefix="hp-pg.") as (directory, bindir, admin_dsn, seconds):
        yield Server(admin_dsn=admin_dsn, directory=directory, bindir=bindir, start_seconds=seconds)


@contextlib.contextmanager
def cluster(*, durable: bool, prefix: str) -> Iterator[tuple[str, str, str, float]]:
    """Initialise and start a server in a fresh directory, stop and remove it after the block.

    Args:
        durable: ``fsync``, ``synchronous_commit`` and ``full_page_writes`` on
            (PostgreSQL's defaults: for measuring), else off (for testing).
        prefix: The start of the temporary directory's name.

    Yields:
        The directory, the binaries' directory, an administrator's DSN to the
        ``postgres`` database, and how long initdb and the start took (seconds).

    Raises:
        ServerUnavailable: The binaries are missing, or root has no postgres user.
    """
    bindir = find_bindir()
    runner = _as_server_user()
    # Short, under /tmp: a unix socket's path may be at most 107 bytes.
    directory = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    data, log = os.path.join(directory, "data"), os.path.join(directory, "server.log")
    pg_ctl = [*runner, os.path.join(bindir, "pg_ctl"), "-D", data, "-w", "-s"]
    started = False
    try:
        if runner:
            shutil.chown(directory, user="postgres", group="postgres")
        began = time.perf_counter()
        initdb = [os.path.join(bindir, "initdb"), "-D", data, "-U", _ROLE, "-A", "trust"]
        # --no-sync: the empty cluster need not reach the disk; a durable server's
        # every commit after it does.
        _run([*runner, *initdb, "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], "initdb")
        switch = "on" if durable else "off"
        options = (
            f"-k {directory} -c listen_addresses='' -c fsync={switch}"
            f" -c synchronous_commit={switch} -c full_page_writes={switch}"
            " -c max_connections=200"
        )
        _run([*pg_ctl, "-l", log, "-o", options, "start"], "pg_ctl start", log)
        started = True
        admin_dsn = f"postgresql://{_ROLE}@/postgres?host={directory}"
        yield directory, bindir, admin_dsn, time.perf_counter() - began
    finally:
        if started:
            # Immediate: the data is thrown away, so nothing needs to reach the disk.
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(directory, ignore_errors=True)


def restart_server(server: Server, *, mode: str = "immediate") -> float:
    """Restart a server started by :func:`running_server` with ``pg_ctl restart -m mode``.

    ``immediate`` kills every server process at once, as a crash would, and the
    server replays its WAL on the way up. The server keeps its options (pg_ctl
    reads them back from ``postmaster.opts``).

    Returns:
        How long the restart took, in seconds (until the server accepts connections).

    Raises:
        ServerUnavailable: The server is an existing one (``HARNPOOL_PG_DSN``),
            which the tests must not restart.
    """
    if server.directory is None or server.bindir is None:
        raise ServerUnavailable(
            f"the server named by {DSN_VARIABLE} is not the tests' own: it is not restarted"
        )
    data = os.path.join(server.directory, "data")
    log = os.path.join(server.directory, "server.log")
    began = time.perf_counter()
    _run(
        [
            *_as_server_user(),
            os.path.join(server.bindir, "pg_ctl"),
            "-D",
            data,
            "-l",
            log,
            "-w",
            "-s",
            "-m",
            mode,
            "restart",
        ],
        f"pg_ctl restart -m {mode}",
        log,
    )
    return time.perf_counter() - began
