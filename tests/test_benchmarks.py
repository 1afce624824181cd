"""The benchmark scripts run and write the results they promise.

They run in ``--quick`` mode (tiny sizes) into a temporary directory, so the
committed results under benchmarks/results/ are never touched. No timing is
asserted: speed is what the benchmarks report, not what the tests check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.postgres_server import Server

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RESULTS = BENCHMARKS / "results"

#: The soak's metrics; it runs once even within run_all.
SOAK_METRICS = {
    "tasks",
    "keep_finished",
    "seconds",
    "tasks_per_s",
    "rss_bytes_start",
    "rss_bytes_end",
    "file_bytes_end",
    "rss_growth_bytes_per_task",
    "file_growth_bytes_per_task",
    "reopen_seconds",
    "reopen_file_bytes",
    "reopen_finished_tasks",
}

#: Every scenario's JSON and the metrics it must carry.
EXPECTED: dict[str, set[str]] = {
    "p1_serial_submit": {
        "tasks",
        "strict_tasks_per_s",
        "pipelined_tasks_per_s",
        "bare_loop_tasks_per_s",
        "strict_ratio_vs_bare_loop",
        "pipelined_ratio_vs_bare_loop",
        "eager_strict_ratio_vs_bare_loop",
        "eager_strict_fsyncs_per_task",
        "strict_flushes_per_task",
        "strict_fsyncs_per_task",
        "flushes_per_task",
        "fsyncs_per_task",
    },
    "p2_concurrent": {
        "tasks",
        "persist_queue_tasks",
        "huey_tasks",
        "harnpool_tasks_per_s",
        "aiojobs_tasks_per_s",
        "asyncio_queue_tasks_per_s",
        "persist_queue_tasks_per_s",
        "huey_tasks_per_s",
        "ratio_vs_aiojobs",
        "eager_ratio_vs_aiojobs",
        "ratio_vs_asyncio_queue",
        "ratio_vs_persist_queue",
        "ratio_vs_huey",
        "flushes_per_task",
        "fsyncs_per_task",
    },
    "p3_submit_many": {
        "tasks",
        "submit_tasks_per_s",
        "submit_alone_tasks_per_s",
        "end_to_end_tasks_per_s",
        "flushes_per_task",
        "fsyncs_per_task",
    },
    "p4_replay": {
        "records",
        "tasks",
        "journal_bytes",
        "open_seconds",
        "retained_rss_bytes_per_task",
        "peak_rss_bytes_per_task",
        "finished_tasks",
        "requeued_tasks",
    },
    "p5_latency": {"samples", "p50_ms", "p99_ms", "max_ms"},
    "p8_delay": {"tasks", "journal_p50_ms", "journal_p99_ms", "journal_max_ms", "journal_early"},
    "p6_events": {
        "cpu_us_per_task_no_events",
        "cpu_us_per_task_unconfigured",
        "overhead_unconfigured_pct",
        "overhead_warning_pct",
    },
    "soak": SOAK_METRICS,
}


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    if not directory.is_dir():
        return {}
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in directory.iterdir()}


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Run the whole suite once in quick mode; return its output directory and stdout."""
    out = tmp_path_factory.mktemp("bench-results")
    journals = tmp_path_factory.mktemp("bench-journals")
    committed = _snapshot(RESULTS)
    done = _run(
        str(BENCHMARKS / "run_all.py"),
        "--quick",
        "--out",
        str(out),
        "--journal-dir",
        str(journals),
        # P7 starts a PostgreSQL server: test_p7_* runs it alone, on the session's server.
        "--without-postgres",
        cwd=tmp_path_factory.getbasetemp(),
    )
    assert done.returncode == 0, done.stderr
    assert _snapshot(RESULTS) == committed, "the quick run touched the committed results"
    # the journals went under --journal-dir, and were removed afterwards
    assert list(journals.iterdir()) == []
    return out, done.stdout


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scenario_writes_its_metrics(quick_run: tuple[Path, str], name: str) -> None:
    out, stdout = quick_run
    document = _load(out / f"{name}.json")
    assert document["name"] == name
    assert EXPECTED[name] <= set(document["metrics"])
    assert all(isinstance(v, int | float) for v in document["metrics"].values())
    assert document["headline"] in document["metrics"]
    assert len(document["runs"]) == 1
    assert document["rows"]
    assert document["description"]  # the script's docstring says what it measures
    environment = document["environment"]
    assert environment["quick"] is True
    assert environment["journal_filesystem"] not in ("tmpfs", "ramfs")
    assert f"\n{name}: " in stdout  # its table was printed


def test_summary_lists_every_target(quick_run: tuple[Path, str]) -> None:
    out, stdout = quick_run
    summary = _load(out / "summary.json")
    assert set(summary["scenarios"]) == set(EXPECTED)
    targets = {row["target"]: row for row in summary["targets"]}
    for label in (
        "P1 pipelined vs bare write+fdatasync",
        "P2 vs aiojobs",
        "P2 vs persist-queue",
        "P3 submit_many",
        "P4 replay + compact",
        "P4 RSS per task",
        "P5 idle dispatch p99",
        "P6 events, structlog unset",
        "P6 events, WARNING level",
    ):
        assert targets[label]["met"] in ("yes", "NO")
    assert "QUICK MODE" in stdout
    for label in (
        "P1 strict vs bare loop (x)",
        "P2 vs asyncio queue (x)",
        "P2 vs huey (x)",
        "Soak file growth (B/task)",
    ):
        assert targets[label]["measured"] > 0
    assert "Soak RSS growth (B/task)" in targets
    assert summary["postgres_left_out"] == "--without-postgres"
    assert "P7 vs pgqueuer" not in targets


def test_durable_scenarios_count_fsyncs(quick_run: tuple[Path, str]) -> None:
    out, _ = quick_run
    for name in ("p1_serial_submit", "p2_concurrent", "p3_submit_many"):
        metrics = _load(out / f"{name}.json")["metrics"]
        # the counting wrapper and the pool's own count agree, and something was synced
        assert metrics["fsyncs_per_task"] == metrics["flushes_per_task"] > 0
    p1 = _load(out / "p1_serial_submit.json")["metrics"]
    assert p1["strict_fsyncs_per_task"] == p1["strict_flushes_per_task"] > 0


def test_replay_scenario_reopens_every_task(quick_run: tuple[Path, str]) -> None:
    metrics = _load(quick_run[0] / "p4_replay.json")["metrics"]
    assert metrics["records"] == 4 * metrics["tasks"]
    assert metrics["finished_tasks"] == 0.8 * metrics["tasks"]
    assert metrics["requeued_tasks"] == 0.1 * metrics["tasks"]


def test_soak_takes_its_size_and_reports_each_checkpoint(tmp_path: Path) -> None:
    journals = tmp_path / "journals"
    journals.mkdir()
    committed = _snapshot(RESULTS)
    done = _run(
        str(BENCHMARKS / "soak.py"),
        "--quick",
        "--tasks",
        "10000",
        "--out",
        str(tmp_path),
        "--journal-dir",
        str(journals),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert _snapshot(RESULTS) == committed
    assert list(journals.iterdir()) == []
    document = _load(tmp_path / "soak.json")
    assert document["description"]
    assert set(document["metrics"]) >= SOAK_METRICS
    assert all(isinstance(v, int | float) for v in document["metrics"].values())
    metrics = document["metrics"]
    assert metrics["tasks"] == 10_000
    # the reopened journal keeps what keep_finished allows (the soak ran more than that)
    assert metrics["reopen_finished_tasks"] == metrics["keep_finished"]
    # a row before the first task, one per tenth of the run, one after reopening
    checkpoints = [row["tasks"] for row in document["rows"]]
    assert checkpoints == [0, *range(1_000, 10_001, 1_000), "reopened"]
    assert all(row["RSS MB"] > 0 for row in document["rows"][:-1])
    assert "\nsoak: " in done.stdout


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here")
def test_refuses_a_memory_filesystem_for_journals(tmp_path: Path) -> None:
    done = _run(
        str(BENCHMARKS / "p5_latency.py"),
        "--quick",
        "--out",
        str(tmp_path),
        "--journal-dir",
        "/dev/shm",
        cwd=tmp_path,
    )
    with open("/proc/self/mountinfo") as f:
        shm_is_memory = any(
            line.split()[4] == "/dev/shm" and line.split(" - ")[1].startswith("tmpfs") for line in f
        )
    if not shm_is_memory:
        pytest.skip("/dev/shm is not a memory filesystem here")
    assert done.returncode != 0
    assert "real disk" in done.stderr
    assert not (tmp_path / "p5_latency.json").exists()


#: P7's metrics for every scenario (``enqueue_process_1p``, ``enqueue_process_2p``, ``drain``).
P7_SCENARIOS = ("enqueue_process_1p", "enqueue_process_2p", "drain")
P7_CONTENDERS = ("harnpool", "harnpool_store", "pgqueuer", "procrastinate")


def _run_on_postgres(
    script: str, server: Server, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """Run a benchmark quickly on the suite's server, writing its JSON into ``tmp_path``."""
    done = _run(
        str(BENCHMARKS / script),
        "--quick",
        "--out",
        str(tmp_path),
        "--admin-dsn",
        server.admin_dsn,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_p7_compares_harnpool_with_its_peers_on_postgres(
    postgres_server: Server, tmp_path: Path
) -> None:
    committed = _snapshot(RESULTS)
    done = _run_on_postgres("p7_postgres.py", postgres_server, tmp_path)
    assert _snapshot(RESULTS) == committed
    document = _load(tmp_path / "p7_postgres.json")
    assert document["name"] == "p7_postgres"
    assert document["description"]
    metrics = document["metrics"]
    assert all(isinstance(v, int | float) for v in metrics.values())
    for scenario in P7_SCENARIOS:
        for contender in P7_CONTENDERS:
            assert metrics[f"{scenario}_{contender}_tasks_per_s"] > 0
        assert metrics[f"{scenario}_ratio_vs_pgqueuer"] == pytest.approx(
            metrics[f"{scenario}_harnpool_tasks_per_s"]
            / metrics[f"{scenario}_pgqueuer_tasks_per_s"]
        )
    assert metrics["ratio_vs_pgqueuer"] == metrics["enqueue_process_1p_ratio_vs_pgqueuer"]
    assert metrics["ratio_vs_procrastinate"] == metrics["enqueue_process_1p_ratio_vs_procrastinate"]
    runs = [row for row in document["rows"] if "tasks" in row]
    assert len(runs) == len(P7_SCENARIOS) * len(P7_CONTENDERS)
    for row in runs:
        # every task's completion was committed: each design costs at least a commit per batch
        assert row["commits/task"] > 0
    # the server it ran on is described, and the databases it made were dropped
    assert any("fsync=" in note for note in document["notes"])
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres_server.admin_dsn, autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'bench_%'")
        assert left.fetchone() == (0,)
    assert "\np7_postgres: " in done.stdout


def test_p8_measures_delayed_tasks_on_postgres_too(postgres_server: Server, tmp_path: Path) -> None:
    done = _run_on_postgres("p8_delay.py", postgres_server, tmp_path)
    metrics = _load(tmp_path / "p8_delay.json")["metrics"]
    assert EXPECTED["p8_delay"] <= set(metrics)
    # no task started before its due time, on either storage, in any run
    assert metrics["journal_early"] == metrics["postgres_early"] == 0
    assert metrics["postgres_saturated_early"] == 0
    assert metrics["postgres_max_ms"] >= metrics["postgres_p99_ms"] >= metrics["postgres_p50_ms"]
    assert "\np8_delay: " in done.stdout
