"""Run every benchmark (P1 to P6 and the soak), print one summary table against the targets,
and write ``summary.json`` beside each scenario's own JSON.

Usage: ``python benchmarks/run_all.py [--quick] [--runs N] [--out DIR] [--journal-dir DIR]``
(``make bench`` runs it with the defaults: full sizes, 3 runs per scenario, the
median run kept, results in benchmarks/results/). ``--quick`` runs tiny sizes
once, only to show that the scripts work; its figures mean nothing. The soak
(``soak.py``, a million tasks through one pool, about a minute and a half) runs
once whatever ``--runs`` says; ``make soak`` runs it alone.
"""

from __future__ import annotations

import dataclasses
import operator
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
import soak

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


def main() -> None:
    cfg = _bench.config_from(_bench.parser(__doc__).parse_args())
    documents: dict[str, dict[str, Any]] = {}
    try:
        for scenario in SCENARIOS:
            documents[scenario.NAME] = _bench.measure(
                cfg, scenario.NAME, scenario.__doc__, scenario.HEADLINE, scenario.run_once
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
    for name, metric, label, compare, threshold, unit in TARGETS:
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
        ("Soak RSS growth (B/task)", documents["soak"]["metrics"]["rss_growth_bytes_per_task"]),
        ("Soak file growth (B/task)", documents["soak"]["metrics"]["file_growth_bytes_per_task"]),
    ]
    for label, value in extra:
        rows.append({"target": label, "measured": float(value), "goal": "", "met": ""})
    title = "\nsummary (median run of each scenario)"
    if cfg.quick:
        title += " -- QUICK MODE: tiny sizes, the figures mean nothing"
    print(_bench.table(rows, title))
    summary = {
        "targets": rows,
        "scenarios": {name: doc["metrics"] for name, doc in documents.items()},
        "environment": _bench.environment(cfg),
    }
    (cfg.out / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary)))


if __name__ == "__main__":
    main()
