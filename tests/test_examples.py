"""Every example runs to its end and says OK."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"

# What each example must print besides its final "OK", so a silently shortened run fails.
EXPECTED = {
    "01_crash_resume.py": [
        "killed with SIGKILL",
        "interrupted while running",
        "resumed: 12 results",
    ],
    "02_inspect_journal.py": [
        "$ harnpool inspect",
        "$ harnpool salvage",
        "$ harnpool compact",
        "t5 (key 'report-may'): queued -> failed",
        "wait('t6') raises TaskCancelled",
        "wait('t4') -> 'charged ACME'",
    ],
    "03_registered_tasks.py": [
        "killed with SIGKILL",
        "pool.recovery.resumed (running now, nothing submitted)",
        "refused at submit, nothing written",
    ],
    "04_retries_and_timeouts.py": [
        "flaky: '/a: 200 OK' after 3 attempts",
        "slow: failed, attempts=2: builtins.TimeoutError",
        "wait(timeout=0.05): task",
    ],
    "05_cancel_and_backpressure.py": [
        "cancel(finished task) -> False",
        "QueueFull (3 tasks written)",
        "TaskRejected: drop_oldest_queue_full",
    ],
    "06_strategies_and_retention.py": [
        "strategy='fair'                     big1 small1 big2 small2 big3 big4",
        "dropped_finished=3",
    ],
    "07_events.py": [
        "before structlog.configure: 0 characters of output",
        "event='task.retry_scheduled'",
        "event='journal.torn_tail'",
    ],
    "08_trio.py": ["checksum from a worker thread", "reopened under trio: resumed ('t8',)"],
    "09_postgres_workers.py": [
        "submitted 6 pages from the client (workers=0)",
        "with SIGKILL while it rendered page",
        "(killed), finished by",
    ],
    "10_blocking.py": [
        "8 threads, 16 tasks: 16 completed",
        "TaskFailed in the calling thread: task t17 failed: builtins.ValueError",
        "WaitTimeout: task t18",
        "then wait -> 'slow done'",
        "reopened on trio: resumed ('t20',)",
    ],
    "12_context_and_results.py": [
        "the fetches ['t3', 't2', 't1']",
        "t1 (page-0, attempt 1) fetched page 0 for req-42",
        "t4 saw request req-42: 5",
        "the submitter's request id is still 'req-43'",
        "log: event=app.fetching task_id=t1 key=page-0 request=req-42",
        "NotInTaskError",
    ],
    "11_scheduled.py": [
        "ms after its due time",
        "heartbeat slots:",
        "reopened: caught up on 1 missed slot: ['heartbeat@",
    ],
}


#: Examples that start a throwaway PostgreSQL server (or use HARNPOOL_PG_DSN's).
NEEDS_POSTGRES = {"09_postgres_workers.py"}


def test_every_example_has_expectations() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("[0-9]*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if name in NEEDS_POSTGRES:
        # Skips where no server can start (fails under CI); the example starts its own.
        request.getfixturevalue("postgres_server")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for text in EXPECTED[name]:
        assert text in result.stdout, text
    assert result.stdout.rstrip().splitlines()[-1].startswith("OK")
