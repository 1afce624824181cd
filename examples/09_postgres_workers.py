"""Worker processes sharing one PostgreSQL pool; one is killed mid-task, another finishes it.

Three worker processes and a submit-only client open the same pool, by DSN and
name. The client submits pages to render; when a worker has started one, it is
killed with SIGKILL. Its task keeps its lease until the lease runs out (2 s
here), then the next claim puts it back in the queue and another worker runs
it. Every ``wait`` returns, and each page was rendered to the end exactly once.

Run it with ``python examples/09_postgres_workers.py [DIRECTORY]``. It uses the
server ``HARNPOOL_PG_DSN`` names, or else starts a throwaway one in a temporary
directory (Debian's ``postgresql`` package: binaries under
``/usr/lib/postgresql/*/bin``), and stops it at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec

import harnpool

PAGES = 6
WORKERS = 3
LEASE = 2.0


class Page(msgspec.Struct, frozen=True):
    number: int
    words: int
    pid: int


def note(directory: str, line: str) -> None:
    # One short write to an O_APPEND file: whole lines, even from several processes.
    fd = os.open(Path(directory, "renders.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def logged(directory: str) -> list[list[str]]:
    log = Path(directory, "renders.log")
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


@harnpool.task(name="example.render_page")
def render_page(directory: str, number: int) -> Page:
    """Runs in whichever worker process claims it (a plain function: a worker thread)."""
    note(directory, f"start {number} {os.getpid()}")
    time.sleep(0.6)
    note(directory, f"done {number} {os.getpid()}")
    return Page(number=number, words=250 * (number + 1), pid=os.getpid())


async def worker(dsn: str, name: str) -> None:
    async with harnpool.open_pool(dsn, name=name, max_concurrent=WORKERS, workers=1, lease=LEASE):
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin


async def submit_and_kill(
    dsn: str, name: str, directory: str, workers: dict[int, subprocess.Popen[str]]
) -> int:
    """Submit the pages (this process runs none: workers=0), kill a busy worker, wait."""
    async with harnpool.open_pool(dsn, name=name, max_concurrent=WORKERS, workers=0) as pool:
        ids = [await pool.submit(render_page, directory, n, key=f"page-{n}") for n in range(PAGES)]
        print(f"submitted {PAGES} pages from the client (workers=0): {', '.join(ids)}")
        with anyio.fail_after(30):
            # Other processes write the log: nothing to wait on here but the file itself.
            while not any(entry[0] == "start" for entry in logged(directory)):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        _, page, pid = next(e for e in logged(directory) if e[0] == "start")
        workers[int(pid)].send_signal(signal.SIGKILL)
        workers.pop(int(pid)).wait()
        print(f"killed worker {pid} with SIGKILL while it rendered page {page}")
        print(f"  its lease ({LEASE} s) runs out, then another worker claims page {page} again")
        pages: list[Page] = [await pool.wait(task_id) for task_id in ids]
    for p in pages:
        print(f"  wait('{ids[p.number]}') -> Page(number={p.number}, words={p.words}, pid={p.pid})")
    redone = next(p for p in pages if p.number == int(page))
    print(f"page {page}: started by {pid} (killed), finished by {redone.pid}")
    return int(pid)


@contextlib.contextmanager
def database() -> Iterator[str]:
    """The DSN in HARNPOOL_PG_DSN, or a throwaway server's for the block."""
    if os.environ.get("HARNPOOL_PG_DSN"):
        print("using the server HARNPOOL_PG_DSN names")
        yield os.environ["HARNPOOL_PG_DSN"]
        return
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None:
        raise SystemExit("no PostgreSQL server here: install postgresql or set HARNPOOL_PG_DSN")
    bindir = os.path.dirname(initdb)
    as_user = (
        ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    )  # initdb refuses root
    home = tempfile.mkdtemp(prefix="hp-ex.", dir="/tmp")  # a socket path must stay short
    data = os.path.join(home, "data")
    pg_ctl = [*as_user, os.path.join(bindir, "pg_ctl"), "-D", data, "-w", "-s"]
    if as_user:
        shutil.chown(home, user="postgres", group="postgres")
    try:
        subprocess.run(
            [*as_user, initdb, "-D", data, "-U", "harn", "-A", "trust", "--no-sync"],
            check=True,
            capture_output=True,
        )
        options = f"-k {home} -c listen_addresses=''"
        log = os.path.join(home, "server.log")
        subprocess.run([*pg_ctl, "-l", log, "-o", options, "start"], check=True)
        print("started a throwaway PostgreSQL server")
        try:
            yield f"postgresql://harn@/postgres?host={home}"
        finally:
            subprocess.run([*pg_ctl, "-m", "fast", "stop"], check=False)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        anyio.run(worker, sys.argv[2], sys.argv[3])
        return 0
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="harnpool-pg-")
    os.makedirs(directory, exist_ok=True)
    Path(directory, "renders.log").unlink(missing_ok=True)
    name = f"pages-{uuid.uuid4().hex[:8]}"  # a pool of its own, whatever else the database holds
    with database() as dsn:
        started = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", dsn, name],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(WORKERS)
        ]
        workers: dict[int, subprocess.Popen[str]] = {}
        for proc in started:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                print(f"FAILED: worker {proc.pid} did not open the pool")
                return 1
            workers[proc.pid] = proc
            print(f"worker process {proc.pid} opened pool {name!r} (workers=1)")
        print(f"{WORKERS} workers share max_concurrent={WORKERS}, lease={LEASE} s")
        killed = anyio.run(submit_and_kill, dsn, name, directory, workers)
        for proc in workers.values():
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)
    log = logged(directory)
    done = {int(page) for event, page, _ in log if event == "done"}
    by_killed = [page for event, page, pid in log if event == "start" and int(pid) == killed]
    finished_twice = len([e for e in log if e[0] == "done"]) - len(done)
    if done != set(range(PAGES)) or finished_twice or len(by_killed) != 1:
        print(f"FAILED: rendered {sorted(done)}, {finished_twice} twice, killed ran {by_killed}")
        return 1
    print("OK: every page rendered to the end exactly once; the killed worker's page by another")
    return 0


if __name__ == "__main__":
    sys.exit(main())
