"""Run every benchmark (P1 to P8 and the soak), print one summary table against the targets,
and write ``summary.json`` beside each scenario's own JSON.

Usage: ``python benchmarks/run_all.py [--quick] [--runs N] [--out DIR] [--journal-dir DIR]
[--without-postgres]``
(``make bench`` runs it with the defaults: full sizes, 3 runs per scenario, the
median run kept, results in benchmarks/results/). ``--quick`` runs tiny sizes
once, only to show that the scripts work; its figures mean nothing. The soak
(``soak.py``, a million tasks through one pool, about a minute and a half) runs
once whatever ``--runs`` says; ``make soak`` runs it alone. P7 (``p7_postgres.py``,
harnpool on PostgreSQL against pgqueuer and procrastinate) starts a throwaway
PostgreSQL server of its own; where the server's binaries are missing, or with
``--without-postgres``, it is left out and the summary says so. P8 (``p8_delay.py``,
how late delayed tasks start) measures the journal, and PostgreSQL where P7 runs.
"""

from __future__ import annotations

import dataclasses
import operator
import os
from collections.abc import Callable
from typing import Any

import _bench
import msgspec
import p1_serial_submit
import p2_concurrent
import p3_submit_many
import p4_replay
import p5_latency
import p6_events
import p7_postgres
import p8_delay
import soak
from _pg_server import ServerUnavailable, find_bindir

SCENARIOS = [p1_serial_submit, p2_concurrent, p3_submit_many, p4_replay, p5_latency, p6_events]

Compare = Callable[[float, float], bool]

#: (scenario, metric, what the target says, comparison, threshold, unit)
TARGETS: list[tuple[str, str, str, Compare, float, str]] = [
    (
        "p1_serial_submit",
        "pipelined_ratio_vs_bare_loop",
        "P1 pipelined vs bare write+fdatasync",
        operator.ge,
        0.9,
        "x",
    ),
    ("p2_concurrent", "ratio_vs_aiojobs", "P2 vs aiojobs", operator.ge, 0.7, "x"),
    ("p2_concurrent", "ratio_vs_persist_queue", "P2 vs persist-queue", operator.ge, 50.0, "x"),
    ("p3_submit_many", "submit_tasks_per_s", "P3 submit_many", operator.ge, 200_000.0, "tasks/s"),
    ("p4_replay", "open_seconds", "P4 replay + compact", operator.le, 1.5, "s"),
    ("p4_replay", "retained_rss_bytes_per_task", "P4 RSS per task", operator.le, 300.0, "B"),
    ("p5_latency", "p99_ms", "P5 idle dispatch p99", operator.le, 1.0, "ms"),
    ("p6_events", "overhead_unconfigured_pct", "P6 events, structlog unset", operator.le, 5.0, "%"),
    ("p6_events", "overhead_warning_pct", "P6 events, WARNING level", operator.le, 5.0, "%"),
]

#: P7's targets, checked when it ran.
POSTGRES_TARGETS: list[tuple[str, str, str, Compare, float, str]] = [
    ("p7_postgres", "ratio_vs_pgqueuer", "P7 vs pgqueuer", operator.ge, 1.5, "x"),
    ("p7_postgres", "ratio_vs_procrastinate", "P7 vs procrastinate", operator.ge, 10.0, "x"),
]


def _postgres_missing(without: bool) -> str | None:
    """Why P7 cannot run here, or None."""
    if without:
        return "--without-postgres"
    if p7_postgres.ADMIN_DSN_VARIABLE in os.environ:
        return None
    try:
        find_bindir()
    except ServerUnavailable as exc:
        return str(exc)
    return None


def main() -> None:
    parser = _bench.parser(__doc__)
    parser.add_argument(
        "--without-postgres", action="store_true", help="leave out P7 (harnpool on PostgreSQL)"
    )
    args = parser.parse_args()
    cfg = _bench.config_from(args)
    skipped = _postgres_missing(args.without_postgres)
    targets = TARGETS if skipped else TARGETS + POSTGRES_TARGETS
    documents: dict[str, dict[str, Any]] = {}
    try:
        for scenario in SCENARIOS:
            documents[scenario.NAME] = _bench.measure(
                cfg, scenario.NAME, scenario.__doc__, scenario.HEADLINE, scenario.run_once
            )
        if skipped is None:
            documents[p7_postgres.NAME] = _bench.measure(
                cfg,
                p7_postgres.NAME,
                p7_postgres.__doc__,
                p7_postgres.HEADLINE,
                p7_postgres.run_once,
            )
        else:
            print(f"\np7_postgres: left out ({skipped})")
        documents[p8_delay.NAME] = _bench.measure(
            cfg,
            p8_delay.NAME,
            p8_delay.__doc__,
            p8_delay.HEADLINE,
            lambda c: p8_delay.run_once(c, postgres=skipped is None),
        )
        tasks = soak.default_tasks(cfg)
        documents[soak.NAME] = _bench.measure(
            dataclasses.replace(cfg, runs=1),
            soak.NAME,
            soak.__doc__,
            soak.HEADLINE,
            lambda c: soak.run_once(c, tasks),
        )
    finally:
        _bench.cleanup(cfg)
    rows: list[_bench.Row] = []
    for name, metric, label, compare, threshold, unit in targets:
        value = float(documents[name]["metrics"][metric])
        sign = ">=" if compare is operator.ge else "<="
        rows.append(
            {
                "target": label,
                "measured": value,
                "goal": f"{sign} {threshold:,g} {unit}",
                "met": "yes" if compare(value, threshold) else "NO",
            }
        )
    extra = [
        (
            "P1 strict vs bare loop (x)",
            documents["p1_serial_submit"]["metrics"]["strict_ratio_vs_bare_loop"],
        ),
        (
            "P2 vs asyncio queue (x)",
            documents["p2_concurrent"]["metrics"]["ratio_vs_asyncio_queue"],
        ),
        ("P2 vs huey (x)", documents["p2_concurrent"]["metrics"]["ratio_vs_huey"]),
        ("P2 fsyncs per task", documents["p2_concurrent"]["metrics"]["fsyncs_per_task"]),
        ("P3 fsyncs per task", documents["p3_submit_many"]["metrics"]["fsyncs_per_task"]),
        ("P5 idle dispatch p50", documents["p5_latency"]["metrics"]["p50_ms"]),
        ("P8 journal due-to-start p50 (ms)", documents["p8_delay"]["metrics"]["journal_p50_ms"]),
        ("P8 journal due-to-start p99 (ms)", documents["p8_delay"]["metrics"]["journal_p99_ms"]),
        ("Soak RSS growth (B/task)", documents["soak"]["metrics"]["rss_growth_bytes_per_task"]),
        ("Soak file growth (B/task)", documents["soak"]["metrics"]["file_growth_bytes_per_task"]),
    ]
    if skipped is None:
        p7 = documents[p7_postgres.NAME]["metrics"]
        extra += [
            ("P7 2 processes vs pgqueuer (x)", p7["enqueue_process_2p_ratio_vs_pgqueuer"]),
            ("P7 drain vs pgqueuer (x)", p7["drain_ratio_vs_pgqueuer"]),
            ("P7 harnpool tasks/s, 1 process", p7["enqueue_process_1p_harnpool_tasks_per_s"]),
            (
                "P8 postgres due-to-start p50 (ms)",
                documents["p8_delay"]["metrics"]["postgres_p50_ms"],
            ),
            (
                "P8 postgres due-to-start p99 (ms)",
                documents["p8_delay"]["metrics"]["postgres_p99_ms"],
            ),
        ]
    for label, value in extra:
        rows.append({"target": label, "measured": float(value), "goal": "", "met": ""})
    title = "\nsummary (median run of each scenario)"
    if cfg.quick:
        title += " -- QUICK MODE: tiny sizes, the figures mean nothing"
    print(_bench.table(rows, title))
    if skipped is not None:
        print(f"  note: P7 left out: {skipped}")
    summary = {
        "postgres_left_out": skipped,
        "targets": rows,
        "scenarios": {name: doc["metrics"] for name, doc in documents.items()},
        "environment": _bench.environment(cfg),
    }
    (cfg.out / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary)))


if __name__ == "__main__":
    main()
