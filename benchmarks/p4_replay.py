"""P4: open a journal of 1,000,000 records (250,000 tasks): replay + compact time, RSS per task.

The journal is generated directly with msgspec from harnpool's own record
Structs: 250,000 tasks with mixed histories, 4 records per task on average
(37,500 completed at the first try, 137,500 completed after an interrupted run,
25,000 failed, 25,000 interrupted twice while running, 25,000 still queued), in
windows of 1,000 tasks as a busy pool would write them; results are small JSON
objects. A fresh subprocess then imports harnpool, reads its RSS from
/proc/self/status, opens the pool (lock, replay, compact, build the pool's
state), and reads RSS again. "retained" is VmRSS after open minus VmRSS before
(after a garbage collection), "peak" is VmHWM minus that same baseline; both
are divided by the number of tasks. The journal is generated outside the timed
child, so its page cache is warm, as it is for a pool reopened after a crash.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _bench
import anyio
import msgspec
from _bench import Config, Result

import harnpool
from harnpool._records import FORMAT_VERSION, Header, Status, TaskRecord

NAME = "p4_replay"
HEADLINE = "open_seconds"
WINDOW = 1_000


def _sizes(cfg: Config) -> int:
    """The number of tasks (records are four times as many)."""
    return 1_000 if cfg.quick else 250_000


def _plan(i: int, tasks: int) -> str:
    """Which history task ``i`` has, in the proportions the docstring gives."""
    slot = (i * 40) // tasks  # 40 slots of 2.5% each
    if slot < 6:  # 15%
        return "completed-first-try"
    if slot < 28:  # 55%
        return "completed-after-crash"
    if slot < 32:  # 10%
        return "failed"
    if slot < 36:  # 10%
        return "running"
    return "queued"  # 10%


def generate(path: Path, tasks: int) -> tuple[int, dict[str, int]]:
    """Write the journal; return the record count and the final status counts."""
    encoder = msgspec.json.Encoder()
    buf = bytearray()
    now = time.time()
    header = Header(
        format=FORMAT_VERSION,
        pool_id="0" * 32,
        created_at=now,
        max_concurrent=8,
        submit_counter=tasks,
    )
    encoder.encode_into(header, buf, -1)
    buf += b"\n"
    records = 0
    finals = {status.value: 0 for status in Status}
    # Spread the histories over the file so every window holds every kind.
    order = sorted(range(tasks), key=lambda i: (i * 7919) % tasks)
    with open(path, "wb") as f:
        for start in range(0, tasks, WINDOW):
            window = order[start : start + WINDOW]
            phases: list[list[TaskRecord]] = [[], [], [], [], []]
            for i in window:
                seq = i + 1
                queued = TaskRecord(
                    id=f"t{seq}",
                    seq=seq,
                    status=Status.QUEUED,
                    submitted_at=now + i * 1e-4,
                    priority=i % 3,
                    key=f"invoice-{i}",
                    function="billing.tasks.send_invoice",
                )
                plan = _plan(i, tasks)
                history = [queued]
                if plan != "queued":
                    run1 = msgspec.structs.replace(
                        queued, status=Status.RUNNING, started_at=now + 1, attempts=1
                    )
                    history.append(run1)
                    if plan in ("completed-after-crash", "running"):
                        run2 = msgspec.structs.replace(run1, started_at=now + 2, attempts=2)
                        history += [msgspec.structs.replace(run1, status=Status.QUEUED), run2]
                    if plan.startswith("completed"):
                        result = msgspec.Raw(encoder.encode({"invoice": i, "sent": True}))
                        history.append(
                            msgspec.structs.replace(
                                history[-1],
                                status=Status.COMPLETED,
                                finished_at=now + 3,
                                result=result,
                            )
                        )
                    elif plan == "failed":
                        history.append(
                            msgspec.structs.replace(
                                run1,
                                status=Status.FAILED,
                                finished_at=now + 3,
                                error_type="builtins.TimeoutError",
                                error_message="the mail server did not answer",
                            )
                        )
                finals[history[-1].status.value] += 1
                for phase, record in enumerate(history):
                    phases[phase].append(record)
            for phase_records in phases:
                for record in phase_records:
                    encoder.encode_into(record, buf, -1)
                    buf += b"\n"
                    records += 1
            f.write(buf)
            buf.clear()
        f.flush()
        os.fsync(f.fileno())
    return records, finals


def _status_kib() -> dict[str, int]:
    values: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values


async def _open(path: str) -> dict[str, float]:
    gc.collect()
    before = _status_kib()["VmRSS"]
    start = time.perf_counter()
    async with harnpool.open_pool(path, max_concurrent=8) as pool:
        seconds = time.perf_counter() - start
        gc.collect()
        after = _status_kib()
        report = pool.recovery
        stats = pool.statistics()
    return {
        "open_seconds": seconds,
        "rss_before": before,
        "rss_after": after["VmRSS"],
        "rss_peak": after["VmHWM"],
        "tasks": report.tasks,
        "requeued": len(report.requeued),
        "queued": report.queued,
        "finished": report.finished,
        "completed": stats.completed,
        "failed": stats.failed,
    }


def _child(path: str) -> None:
    print(json.dumps(anyio.run(_open, path, backend="asyncio")))


def run_once(cfg: Config) -> Result:
    tasks = _sizes(cfg)
    path = cfg.scratch("p4-harnpool") / "pool.jsonl"
    records, finals = generate(path, tasks)
    size = path.stat().st_size
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(path)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the child that opens the journal failed:\n{done.stderr}")
    child: dict[str, float] = json.loads(done.stdout)
    if child["tasks"] != tasks or child["completed"] != finals["completed"]:
        raise RuntimeError(f"the reopened pool does not match the journal: {child}")
    retained = (child["rss_after"] - child["rss_before"]) / tasks
    peak = (child["rss_peak"] - child["rss_before"]) / tasks
    rows = [
        {
            "journal": f"{records:,} records, {tasks:,} tasks",
            "MB": size / 1e6,
            "open s": child["open_seconds"],
            "records/s": records / child["open_seconds"],
            "retained B/task": retained,
            "peak B/task": peak,
            "requeued": int(child["requeued"]),
            "finished": int(child["finished"]),
        }
    ]
    metrics = {
        "records": records,
        "tasks": tasks,
        "journal_bytes": size,
        HEADLINE: child["open_seconds"],
        "retained_rss_bytes_per_task": retained,
        "peak_rss_bytes_per_task": peak,
        "rss_before": child["rss_before"],
        "rss_after": child["rss_after"],
        "rss_peak": child["rss_peak"],
        "finished_tasks": child["finished"],
        "requeued_tasks": child["requeued"],
    }
    notes = ["RSS per task divides by every task; unfinished tasks cost the same as finished"]
    return Result(rows=rows, metrics=metrics, notes=notes)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2])
    else:
        _bench.main(NAME, __doc__, HEADLINE, run_once)
