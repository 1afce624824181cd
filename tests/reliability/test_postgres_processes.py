"""One PostgreSQL pool shared by real processes: the limit, crashes, a server restart.

Every process (``_pg_worker_child.py``) opens the same pool by DSN and name with
``harnpool.open_pool``: workers run its tasks, a submit-only client
(``workers=0``) submits them and waits for their results. The tasks
(``_pg_tasks.py``) write a ledger row when their function starts and stamp it
when it ends, with the database's clock, so the checker sees what really ran,
when, and in which process. :func:`check` reads the ledger and the pool's table
and counts:

- lost: a task whose submit returned that did not complete, or whose wait did
  not return its result;
- wrong results: a wait that returned another value, or another type, than the
  task's function gives (a ``Receipt`` struct, or a dict);
- finished reruns: a start after the task's completion was stored;
- unexplained starts: a task started more than once, beyond one start per
  process killed while that start was under way;
- max overlap: the most task functions running at once, from the ledger's
  intervals (an interval a SIGKILL cut ends at the kill).

The crash loop's seed is printed; ``HARNPOOL_PG_CRASH_SEED`` replays its choices
(victims, delays), though not the processes' own timing.

The server-restart tests need the throwaway server (a server of this module's
own): they are skipped when ``HARNPOOL_PG_DSN`` names an existing one.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

import anyio
import msgspec
import pytest

import harnpool

psycopg = pytest.importorskip("psycopg")

from tests.postgres_server import (  # noqa: E402
    DSN_VARIABLE,
    Server,
    restart_server,
    running_server,
)
from tests.reliability import _pg_tasks  # noqa: E402
from tests.reliability._pg_worker_child import Config  # noqa: E402
from tests.reliability.conftest import ReportFigures  # noqa: E402

ROOT = Path(__file__).parent.parent.parent
SEED_VARIABLE = "HARNPOOL_PG_CRASH_SEED"
MAX_CONCURRENT = 3
#: How long a process may take to open its pool, or to finish once asked to.
PROCESS_SECONDS = 30.0


def execute(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def as_url(dsn: str) -> str:
    """A DSN as a ``postgresql://`` URI: what ``open_pool`` takes for a database."""
    params = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items()}
    user = quote(params.pop("user", ""), safe="")
    dbname = quote(params.pop("dbname", ""), safe="")
    query = urlencode(params)
    return f"postgresql://{user}@/{dbname}" + (f"?{query}" if query else "")


class Child:
    """A child process whose stdout lines a thread collects."""

    def __init__(self, config: Config, ledger_dsn: str, log: Path) -> None:
        self.config = config
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.reliability._pg_worker_child",
                msgspec.json.encode(config),
            ],
            cwd=ROOT,
            env={**os.environ, _pg_tasks.DSN_VARIABLE: ledger_dsn},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                self.lines.put(raw.decode().rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float = PROCESS_SECONDS) -> str:
        """Wait for the next stdout line; it must start with ``prefix``."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"process {self.pid} printed no {prefix!r} in {timeout} s"
            ) from None
        if line is None:
            raise AssertionError(
                f"process {self.pid} exited ({self.process.wait()}) before {prefix!r}"
            )
        assert line.startswith(prefix), line
        return line

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def exited(self) -> int:
        """Wait for the process to exit on its own; return its exit status."""
        return self.process.wait(PROCESS_SECONDS)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited in time; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(PROCESS_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
        status = self.process.wait()
        self._reader.join(PROCESS_SECONDS)
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        self._log.close()
        return status


@dataclass
class Cluster:
    """The processes sharing one pool; every one is stopped when the test ends."""

    dsn: str
    pool: str
    directory: Path
    lease: float
    #: A task's lease may expire this many times before it fails.
    max_recoveries: int = 5
    children: list[Child] = field(default_factory=list)
    kills: int = 0

    def start(self, workers: int, tasks: int = 0, *, retry_wait: bool = False) -> Child:
        config = Config(
            dsn=as_url(self.dsn),
            pool=self.pool,
            max_concurrent=MAX_CONCURRENT,
            workers=workers,
            lease=self.lease,
            max_recoveries=self.max_recoveries,
            tasks=tasks,
            retry_wait=retry_wait,
        )
        child = Child(config, self.dsn, self.directory / "children.log")
        self.children.append(child)
        return child

    def kill(self, child: Child) -> None:
        """SIGKILL ``child`` and note when, on the database's clock, once it is dead."""
        child.process.send_signal(signal.SIGKILL)
        child.process.wait()
        execute(
            self.dsn,
            "INSERT INTO hp_kill (pool, pid, at) VALUES (%s, %s, clock_timestamp())",
            (self.pool, child.pid),
        )
        self.kills += 1
        child.stop()

    def stop(self) -> None:
        for child in self.children:
            child.stop()

    def log(self) -> str:
        path = self.directory / "children.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""


@pytest.fixture
def cluster(postgres_dsn: str, pool_name: str, tmp_path: Path) -> Iterator[Cluster]:
    _pg_tasks.create_tables(postgres_dsn)
    made = Cluster(postgres_dsn, pool_name, tmp_path, lease=30.0)
    yield made
    made.stop()


@dataclass
class Report:
    """What :func:`check` found."""

    tasks: int = 0
    starts: int = 0
    results: int = 0
    lost: int = 0
    wrong_results: int = 0
    finished_reruns: int = 0
    unexplained_starts: int = 0
    #: Starts that a SIGKILL cut (their process died before the function ended).
    cut: int = 0
    max_overlap: int = 0
    pids: set[int] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)

    def violation(self, text: str) -> None:
        if len(self.violations) < 30:
            self.violations.append(text)


def check(
    dsn: str, pool: str, outage: tuple[datetime.datetime, datetime.datetime] | None = None
) -> Report:
    """Read the ledger, the acknowledgements, the results and the pool's rows.

    A start under way while the server was down (``outage``: from before the
    restart to when it was back) may be followed by another, as one a SIGKILL
    cut: its outcome could not be written, and its lease lapsed.
    """
    report = Report()
    acked = dict(execute(dsn, "SELECT key, task_id FROM hp_acked WHERE pool = %s", (pool,)))
    rows = {
        key: (f"t{seq}", status, finished)
        for key, seq, status, finished in execute(
            dsn, "SELECT key, seq, status, finished_at FROM harnpool_task WHERE pool = %s", (pool,)
        )
    }
    results = execute(dsn, "SELECT key, type, value FROM hp_result WHERE pool = %s", (pool,))
    kills: dict[int, datetime.datetime] = dict(
        execute(dsn, "SELECT pid, at FROM hp_kill WHERE pool = %s", (pool,))
    )
    ledger = execute(
        dsn, "SELECT key, pid, started, ended FROM hp_ledger WHERE pool = %s ORDER BY id", (pool,)
    )
    report.tasks = len(acked)
    for key, task_id in acked.items():
        row = rows.get(key)
        if row is None or row[0] != task_id or row[1] != "completed":
            report.lost += 1
            report.violation(f"{key} was acknowledged as {task_id}; the pool has {row}")
    returned = {key for key, _, _ in results}
    for key in acked.keys() - returned:
        report.lost += 1
        report.violation(f"wait({key}) never returned")
    report.results = len(results)
    for key, type_name, value in results:
        index = _pg_tasks.index(key)
        want = _pg_tasks.expected(pool, key, index)
        if type_name != type(want).__name__ or msgspec.json.decode(value) != msgspec.json.decode(
            msgspec.json.encode(want)
        ):
            report.wrong_results += 1
            report.violation(f"wait({key}) returned {type_name} {value}, want {want!r}")
    starts: dict[str, list[tuple[int, datetime.datetime, datetime.datetime | None]]] = (
        collections.defaultdict(list)
    )
    intervals: list[tuple[datetime.datetime, datetime.datetime]] = []
    for key, pid, started, ended in ledger:
        report.starts += 1
        report.pids.add(pid)
        starts[key].append((pid, started, ended))
        if key not in acked:
            report.violation(f"{key} started, but no submit of it returned")
        if ended is None:
            if pid in kills:
                report.cut += 1
                ended = kills[pid]
            else:
                report.violation(f"{key} started in {pid}, which was not killed, and never ended")
                continue
        intervals.append((started, ended))
    for key, runs in starts.items():
        row = rows.get(key)
        finished = None if row is None else row[2]
        if finished is not None:
            for pid, started, _ in runs:
                if started > finished:
                    report.finished_reruns += 1
                    report.violation(f"{key} started in {pid} at {started}, after it finished")
        # Every start but the one that completed the task must have been under
        # way in a process a SIGKILL ended: at most one more start per crash.
        completing = max(
            (run for run in runs if finished is not None and run[1] <= finished),
            key=lambda run: run[1],
            default=None,
        )
        unexplained = [
            run
            for run in runs
            if run is not completing
            and not (run[0] in kills and run[1] < kills[run[0]])
            and not (
                outage is not None
                and run[1] < outage[1]
                and (run[2] is None or run[2] >= outage[0])
            )
        ]
        if len(unexplained) > (0 if completing is not None else 1):
            report.unexplained_starts += len(unexplained)
            report.violation(f"{key} started {len(runs)} times; not cut by a kill: {unexplained}")
    report.max_overlap = max_overlap(intervals)
    return report


def max_overlap(intervals: list[tuple[datetime.datetime, datetime.datetime]]) -> int:
    """The most intervals open at one instant; one ending as another starts do not overlap."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def assert_clean(report: Report, cluster: Cluster) -> None:
    assert not report.violations, "\n".join(report.violations) + "\n" + cluster.log()
    assert report.lost == report.wrong_results == report.finished_reruns == 0
    assert report.unexplained_starts == 0
    assert report.results == report.tasks
    assert report.max_overlap <= MAX_CONCURRENT


def test_worker_processes_share_the_limit_and_run_each_key_once(
    cluster: Cluster, report_figures: ReportFigures
) -> None:
    began = time.perf_counter()
    workers = [cluster.start(workers=2) for _ in range(3)]
    for worker in workers:
        worker.expect("ready")
    submitter = cluster.start(workers=0, tasks=36)
    submitter.expect("ready")
    submitter.expect("done 36", timeout=60)
    report = check(cluster.dsn, cluster.pool)
    assert_clean(report, cluster)
    assert report.starts == report.tasks == 36
    # The limit was reached, by tasks in more than one process, never by the submitter.
    assert report.max_overlap == MAX_CONCURRENT
    assert len(report.pids) > 1
    assert submitter.pid not in report.pids
    report_figures(
        "3 worker processes (workers=2) + 1 submitter, max_concurrent=3",
        {
            "tasks": report.tasks,
            "starts": report.starts,
            "max_overlap": report.max_overlap,
            "worker_processes_used": len(report.pids),
            "seconds": round(time.perf_counter() - began, 1),
        },
    )


def busy_pids(cluster: Cluster) -> set[int]:
    """The processes with a task function under way, by the ledger (killed ones included)."""
    rows = execute(
        cluster.dsn,
        "SELECT DISTINCT pid FROM hp_ledger WHERE pool = %s AND ended IS NULL",
        (cluster.pool,),
    )
    return {pid for (pid,) in rows}


def crash_loop(cluster: Cluster, kills: int, rng: random.Random) -> dict[str, object]:
    """Run 3 workers and a submitter; SIGKILL a random worker ``kills`` times, replacing it.

    Half the time the next kill does not wait for the replacement to open its
    pool, so it may land while a worker starts.
    """
    began = time.perf_counter()
    workers = [cluster.start(workers=2) for _ in range(3)]
    for worker in workers:
        worker.expect("ready")
    submitter = cluster.start(workers=0)
    submitter.expect("ready")
    mid_task = 0
    for _ in range(kills):
        time.sleep(rng.uniform(0, 0.4))
        if rng.random() < 0.75:
            # Most kills land while the victim runs a task, at a random point of it.
            deadline = time.monotonic() + PROCESS_SECONDS
            while not (busy := [i for i, w in enumerate(workers) if w.pid in busy_pids(cluster)]):
                assert time.monotonic() < deadline, "no worker started a task\n" + cluster.log()
                time.sleep(0.02)
            slot = rng.choice(busy)
            time.sleep(rng.uniform(0, 0.15))
        else:
            slot = rng.randrange(len(workers))
        mid_task += workers[slot].pid in busy_pids(cluster)
        cluster.kill(workers[slot])
        workers[slot] = cluster.start(workers=2)
        if rng.random() < 0.5:
            workers[slot].expect("ready")
    submitter.close_stdin()
    done = submitter.expect("done", timeout=90)
    return {
        "kills": kills,
        "kills_mid_task": mid_task,
        "submitted": int(done.split()[1]),
        "seconds": round(time.perf_counter() - began, 1),
    }


def _crash_seed() -> int:
    seed = int(os.environ.get(SEED_VARIABLE) or random.randrange(2**32))
    print(f"crash loop seed: {seed} (replay with {SEED_VARIABLE}={seed})")
    return seed


@pytest.mark.parametrize(
    "kills",
    [10, pytest.param(150, marks=[pytest.mark.slow, pytest.mark.timeout(1200)])],
)
def test_sigkilled_workers_lose_nothing_and_rerun_only_what_a_crash_hit(
    cluster: Cluster, report_figures: ReportFigures, kills: int
) -> None:
    seed = _crash_seed()
    cluster.lease = 1.5
    # Kills aim at busy workers, so one task may be hit many times: it must not fail for it.
    cluster.max_recoveries = 1000
    figures = crash_loop(cluster, kills, random.Random(seed))
    report = check(cluster.dsn, cluster.pool)
    assert_clean(report, cluster)
    assert report.tasks == figures["submitted"]
    report_figures(
        f"crash loop, lease {cluster.lease} s, seed {seed}",
        {
            **figures,
            "tasks": report.tasks,
            "starts": report.starts,
            "starts_cut_by_kills": report.cut,
            "reruns": report.starts - report.tasks,
            "finished_reruns": report.finished_reruns,
            "lost": report.lost,
            "max_overlap": report.max_overlap,
        },
    )


@pytest.fixture(scope="module")
def own_server(postgres_server: Server) -> Iterator[Server]:
    """A server of this module's own, which a test may restart, or a skip.

    ``postgres_server`` first: where no server can start, it skips (or fails under CI).
    """
    if postgres_server.directory is None:
        pytest.skip(f"{DSN_VARIABLE} names an existing server, which the tests must not restart")
    with running_server() as server:
        yield server


def listeners(dsn: str) -> int:
    """How many of the database's connections sit idle after a LISTEN."""
    ((count,),) = execute(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state = 'idle' AND query ILIKE 'LISTEN %%'",
    )
    assert isinstance(count, int)
    return count


def restartable_database(server: Server) -> str:
    """A new database on ``server`` whose commits survive an immediate restart."""
    dsn = server.create_database()
    # The throwaway server commits asynchronously; a crash may drop such commits,
    # so this database waits for its WAL to be written, as a production one would.
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    execute(server.admin_dsn, f'ALTER DATABASE "{name}" SET synchronous_commit = on')
    return dsn


def test_immediate_server_restart_loses_nothing_and_every_worker_resumes(
    own_server: Server, pool_name: str, tmp_path: Path, report_figures: ReportFigures
) -> None:
    dsn = restartable_database(own_server)
    _pg_tasks.create_tables(dsn)
    cluster = Cluster(dsn, pool_name, tmp_path, lease=4.0)
    try:
        # One task per worker: once the server is back, the limit of 3 is reached
        # only if every worker claims again.
        workers = [cluster.start(workers=1) for _ in range(3)]
        for worker in workers:
            worker.expect("ready")
        listening = listeners(dsn)
        # No retry in the child: the pool's own wait rides out the restart.
        submitter = cluster.start(workers=0, tasks=45)
        submitter.expect("ready")
        deadline = time.monotonic() + PROCESS_SECONDS
        while (
            execute(
                dsn,
                "SELECT count(*) FROM hp_ledger WHERE pool = %s AND ended IS NOT NULL",
                (pool_name,),
            )[0][0]
            < 9
        ):
            assert time.monotonic() < deadline, cluster.log()
            time.sleep(0.02)
        ((down_at,),) = execute(dsn, "SELECT clock_timestamp()")
        seconds = restart_server(own_server, mode="immediate")
        ((back_at,),) = execute(dsn, "SELECT clock_timestamp()")
        retried = int(submitter.expect("done 45", timeout=90).split()[2])
        assert submitter.exited() == 0
        # Every worker listens again (the submitter's listener is gone with it).
        deadline = time.monotonic() + PROCESS_SECONDS
        while listeners(dsn) < listening:
            assert time.monotonic() < deadline, f"{listeners(dsn)} of {listening} listen again"
            time.sleep(0.05)
        report = check(dsn, pool_name, outage=(down_at, back_at))
        assert_clean(report, cluster)
        # Only the tasks under way at the restart (one per worker) may have run again.
        assert report.starts - report.tasks <= len(workers)
        firsts = dict(
            execute(
                dsn,
                "SELECT pid, min(started) FROM hp_ledger WHERE pool = %s AND started > %s"
                " GROUP BY pid",
                (pool_name, back_at),
            )
        )
        assert set(firsts) == {w.pid for w in workers}, "a worker never ran a task again"
        resumed = max(firsts.values()) - back_at
    finally:
        cluster.stop()
    report_figures(
        "pg_ctl restart -m immediate after 9 of 45 tasks, 3 workers (workers=1), lease 4 s",
        {
            "restart_seconds": round(seconds, 2),
            "every_worker_ran_again_within_s": round(resumed.total_seconds(), 2),
            "listeners_back": f"{listening}/{listening}",
            "waits_retried": retried,
            "tasks": report.tasks,
            "starts": report.starts,
            "reruns": report.starts - report.tasks,
            "lost": report.lost,
            "finished_reruns": report.finished_reruns,
            "max_overlap": report.max_overlap,
        },
    )


_blocked_started = threading.Event()
_blocked_release = threading.Event()


@harnpool.task(name="tests.pg.blocked")
def blocked() -> str:
    """Runs until the test releases it."""
    _blocked_started.set()
    _blocked_release.wait(PROCESS_SECONDS)
    return "released"


def task_status(dsn: str, pool: str, task_id: str) -> str:
    ((status,),) = execute(
        dsn,
        "SELECT status FROM harnpool_task WHERE pool = %s AND 't' || seq = %s",
        (pool, task_id),
    )
    assert isinstance(status, str)
    return status


async def test_an_outcome_written_right_after_a_server_restart_is_kept(
    own_server: Server, pool_name: str
) -> None:
    dsn = restartable_database(own_server)
    _blocked_started.clear()
    _blocked_release.clear()
    async with harnpool.open_pool(
        as_url(dsn), name=pool_name, max_concurrent=1, workers=1, lease=30.0
    ) as pool:
        task_id = await pool.submit(blocked, key="blocked")
        with anyio.fail_after(PROCESS_SECONDS):
            await anyio.to_thread.run_sync(_blocked_started.wait)
        await anyio.to_thread.run_sync(restart_server, own_server)
        _blocked_release.set()
        # Leaving the block by this TimeoutError abandons the task, without
        # waiting out its lease.
        with anyio.fail_after(5):
            # Another connection polls the row: what the database holds is the point.
            while await anyio.to_thread.run_sync(task_status, dsn, pool_name, task_id) != (  # noqa: ASYNC110
                "completed"
            ):
                await anyio.sleep(0.05)


async def test_wait_called_after_a_server_restart_waits(own_server: Server, pool_name: str) -> None:
    dsn = restartable_database(own_server)
    async with harnpool.open_pool(as_url(dsn), name=pool_name, max_concurrent=1, workers=0) as pool:
        task_id = await pool.submit(blocked, key="blocked")
        await anyio.to_thread.run_sync(restart_server, own_server)
        with pytest.raises(harnpool.WaitTimeout):
            await pool.wait(task_id, timeout=1)
