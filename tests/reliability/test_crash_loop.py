"""Crash loop: SIGKILL a pool's process at random moments, reopen, carry on; check a ledger.

In the spirit of Jepsen's total-queue check. A child process (``_crash_child.py``)
runs a pool with a mix of work (priorities, keys, async and sync functions,
failures, slow tasks, dict/list/Struct results) and appends what it was told to a
ledger outside the journal. The parent kills it with SIGKILL after a random
number of ledger events plus a random delay, reads the journal back read-only
with ``harnpool._journal.load``, and starts the next child on the same journal;
that child re-submits every key not yet finished (re-attaching the recovered
tasks), a sample of finished ones, and some new ones. The checker asserts:

- lost = 0: every acknowledged key is in the journal after every crash, with the
  id it was acknowledged with, and every result ``wait`` returned is durable;
- finished reruns = 0: no task starts after its completion was seen durable in a
  journal the parent read, or after ``wait`` returned its result;
- unexpected = 0: no task in the journal that nobody submitted, none twice;
- each task starts at most once per child, so at most once more than the number
  of crashes that hit it unfinished;
- every result and error is the one its function gives, and at the end every
  task has finished.

The loop runs once with each ``start`` setting. With ``"eager"`` a task may run
before its submit is acknowledged, so a crash may cut a run whose submit never
returned; the checks allow that as they allow a crash mid-run.

The seed is printed; set ``HARNPOOL_CRASH_SEED`` to replay a run.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from harnpool._journal import Loaded, load
from harnpool._records import FINISHED, Status, TaskRecord
from tests.reliability import _crash_child
from tests.reliability.conftest import ReportFigures

CHILD = Path(__file__).with_name("_crash_child.py")
#: A child that has not finished or been killed after this long is hung.
CHILD_TIMEOUT = 60.0
NEW_KEYS_PER_ROUND = 6
FINISHED_SAMPLE = 8
#: No new keys while this many are unfinished, so a run of early kills cannot pile up work.
BACKLOG_LIMIT = 40


class _Payload(msgspec.Struct, frozen=True):
    type: str
    value: msgspec.Raw


@dataclass
class Checker:
    """Replays the ledger and the journal after each child and collects violations."""

    journal: Path
    ledger: Path
    #: The pool's ``start`` setting in every child.
    start: str = "strict"
    asked: set[str] = field(default_factory=set)
    ids: dict[str, str] = field(default_factory=dict)
    #: Keys the parent has seen finished in a journal it loaded.
    durable_finished: set[str] = field(default_factory=set)
    #: Keys whose result or error a child's wait() returned.
    result_seen: set[str] = field(default_factory=set)
    starts: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Crashes that hit a key after it started and before its end was durable.
    hits: collections.Counter[str] = field(default_factory=collections.Counter)
    started_this_round: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    offset: int = 0
    round: int = 0
    acks: int = 0
    results_returned: int = 0
    torn_tails: int = 0
    requeued: int = 0
    lost: int = 0
    finished_reruns: int = 0
    unexpected: int = 0

    def violation(self, text: str) -> None:
        self.violations.append(f"round {self.round}: {text}")

    def begin_round(self, number: int) -> None:
        self.round = number
        self.started_this_round = set()
        self._append(f"round - {number}\n")

    def _append(self, line: str) -> None:
        fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def read_ledger(self) -> None:
        """Check every ledger line the last child wrote, in order."""
        with self.ledger.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        if data and not data.endswith(b"\n"):
            # os.write of one short line to an O_APPEND file is not torn by SIGKILL.
            self.violation(f"the ledger ends in a torn line {data[-80:]!r}")
            data = data[: data.rfind(b"\n") + 1]
        self.offset += len(data)
        for raw in data.decode().splitlines():
            event, key, payload = raw.split(" ", 2)
            self._event(event, key, payload)

    def _event(self, event: str, key: str, payload: str) -> None:
        if event == "acked":
            self.acks += 1
            task_id = msgspec.json.decode(payload, type=str)
            if key not in self.asked:
                self.unexpected += 1
                self.violation(f"{key} was acknowledged but never asked for")
            known = self.ids.setdefault(key, task_id)
            if known != task_id:
                self.violation(f"{key} was acknowledged as {task_id}, before as {known}")
        elif event == "opened":
            self.requeued += int(payload)
        elif event == "start":
            if key in self.durable_finished or key in self.result_seen:
                self.finished_reruns += 1
                self.violation(f"{key} started again after it finished durably")
            if key in self.started_this_round:
                self.violation(f"{key} started twice in one process")
            self.started_this_round.add(key)
            self.starts[key] += 1
        elif event in ("result", "failed"):
            self.results_returned += 1
            self.result_seen.add(key)
            status, want = _crash_child.expected(key)
            if event == "result":
                got = msgspec.json.decode(payload, type=_Payload)
                if status != "completed" or bytes(got.value) != want:
                    self.violation(f"wait({key}) returned {payload}, want {status} {want!r}")
                elif got.type != _crash_child.expected_type(key):
                    self.violation(f"wait({key}) returned a {got.type}")
            elif status != "failed" or payload.encode() != want:
                self.violation(f"wait({key}) raised {payload}, want {status} {want!r}")

    def check_journal(self, *, killed: bool) -> Loaded | None:
        """Load the journal the child left and check it against the ledger."""
        try:
            loaded = load(self.journal)
        except Exception as exc:
            self.violation(f"the journal does not load: {exc!r}")
            return None
        if loaded is None:
            if self.ids:
                self.lost += len(self.ids)
                self.violation("the journal is missing")
            return None
        if loaded.torn is not None:
            self.torn_tails += 1
        by_key: dict[str, str] = {}
        for record in loaded.tasks.values():
            if record.key is None or record.key not in self.asked:
                self.unexpected += 1
                self.violation(f"{record.id} (key {record.key}) was never submitted")
                continue
            if record.key in by_key:
                self.unexpected += 1
                self.violation(f"{record.key} is both {by_key[record.key]} and {record.id}")
            by_key[record.key] = record.id
            if record.status in FINISHED:
                self._check_outcome(record)
                self.durable_finished.add(record.key)
        for key, task_id in self.ids.items():
            if by_key.get(key) != task_id:
                self.lost += 1
                self.violation(f"acknowledged {key} ({task_id}) is not in the journal")
        for key in self.result_seen - self.durable_finished:
            self.lost += 1
            self.violation(f"wait({key}) returned but the journal has it unfinished")
        for key in self.started_this_round - self.durable_finished:
            if not killed:
                self.violation(f"{key} started but the child exited with it unfinished")
            self.hits[key] += 1
        for key in self.started_this_round:
            if self.starts[key] > 1 + self.hits[key]:
                self.violation(
                    f"{key} started {self.starts[key]} times, "
                    f"crashes hit it unfinished {self.hits[key]} times"
                )
        return loaded

    def _check_outcome(self, record: TaskRecord) -> None:
        assert record.key is not None
        want_status, want = _crash_child.expected(record.key)
        if record.status is Status.COMPLETED:
            assert not isinstance(record.result, msgspec.UnsetType)
            got = bytes(record.result)
        else:
            got = msgspec.json.encode([record.error_type, record.error_message])
        if record.status != want_status or got != want:
            self.violation(
                f"{record.key} ended {record.status} {got!r}, want {want_status} {want!r}"
            )


def _index(key: str) -> int:
    return _crash_child.index(key)


def _run_child(
    directory: Path, checker: Checker, keys: list[str], *, kill_after: int | None, delay: float
) -> int:
    """Run one child on ``keys``; SIGKILL it after ``kill_after`` events and ``delay`` seconds.

    Returns:
        Its exit status (``-SIGKILL`` when the kill landed).
    """
    plan = _crash_child.Plan(
        round=checker.round, seed=checker.round, keys=keys, start=checker.start
    )
    plan_path = directory / "plan.json"
    plan_path.write_bytes(msgspec.json.encode(plan))
    read_fd, write_fd = os.pipe()
    with (directory / "child.log").open("ab") as log:
        child = subprocess.Popen(
            [
                sys.executable,
                str(CHILD),
                str(checker.journal),
                str(checker.ledger),
                str(plan_path),
                str(write_fd),
            ],
            pass_fds=(write_fd,),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    os.close(write_fd)
    hung = threading.Event()

    def on_timeout() -> None:
        hung.set()
        child.kill()

    watchdog = threading.Timer(CHILD_TIMEOUT, on_timeout)
    watchdog.start()
    try:
        with os.fdopen(read_fd, "rb") as events:
            for seen, _line in enumerate(events, 1):
                if kill_after is not None and seen >= kill_after:
                    if delay:
                        time.sleep(delay)  # a random moment between two events, not a wait
                    child.send_signal(signal.SIGKILL)
                    break
        status = child.wait()
    finally:
        watchdog.cancel()
    if hung.is_set():
        checker.violation(f"the child hung: {_log_tail(directory)}")
    return status


def _log_tail(directory: Path) -> str:
    return (directory / "child.log").read_text(errors="replace")[-2000:]


@dataclass
class Summary:
    checker: Checker
    seed: int
    kills: int = 0
    rounds: int = 0
    clean_exits: int = 0
    completed: int = 0
    failed: int = 0
    max_attempts: int = 0
    seconds: float = 0.0

    def figures(self) -> dict[str, object]:
        c = self.checker
        return {
            "seed": self.seed,
            "kills": self.kills,
            "rounds": self.rounds,
            "clean_exits": self.clean_exits,
            "tasks": len(c.asked),
            "acked": len(c.ids),
            "acks": c.acks,
            "completed": self.completed,
            "failed": self.failed,
            "results_returned": c.results_returned,
            "requeued_on_open": c.requeued,
            "reruns_of_interrupted": sum(c.starts.values()) - len(c.starts),
            "max_starts": max(c.starts.values(), default=0),
            "max_attempts": self.max_attempts,
            "torn_tails": c.torn_tails,
            "lost": c.lost,
            "finished_reruns": c.finished_reruns,
            "unexpected": c.unexpected,
            "violations": len(c.violations),
            "seconds": round(self.seconds, 1),
        }


def crash_loop(directory: Path, *, kills: int, seed: int, start: str = "strict") -> Summary:
    """Kill ``kills`` children at random moments, then run one to the end; check throughout."""
    began = time.monotonic()
    rng = random.Random(seed)
    checker = Checker(
        journal=directory / "pool.jsonl", ledger=directory / "ledger.txt", start=start
    )
    summary = Summary(checker=checker, seed=seed)
    next_key = 0
    while summary.kills < kills:
        if summary.rounds > 3 * kills + 10:
            checker.violation("children keep finishing before the kill point")
            break
        summary.rounds += 1
        checker.begin_round(summary.rounds)
        unfinished = sorted(checker.asked - checker.durable_finished, key=_index)
        finished = sorted(checker.durable_finished, key=_index)
        keys = unfinished + rng.sample(finished, min(FINISHED_SAMPLE, len(finished)))
        if len(unfinished) < BACKLOG_LIMIT:
            new = [f"k{next_key + i}" for i in range(NEW_KEYS_PER_ROUND)]
            next_key += len(new)
            checker.asked.update(new)
            keys += new
        rng.shuffle(keys)
        # About how many ledger lines a child writes if nobody kills it.
        events = 3 + 2 * len(keys) + 2 * (len(checker.asked) - len(finished))
        delay = rng.uniform(0, 0.002) if rng.random() < 0.7 else rng.uniform(0, 0.03)
        status = _run_child(
            directory, checker, keys, kill_after=rng.randint(1, events), delay=delay
        )
        checker.read_ledger()
        if status == -signal.SIGKILL:
            summary.kills += 1
        elif status == 0:
            summary.clean_exits += 1
        else:
            checker.violation(f"the child exited with {status}: {_log_tail(directory)}")
        checker.check_journal(killed=status == -signal.SIGKILL)

    # A last child, never killed, finishes everything.
    summary.rounds += 1
    checker.begin_round(summary.rounds)
    status = _run_child(
        directory, checker, sorted(checker.asked, key=_index), kill_after=None, delay=0
    )
    checker.read_ledger()
    if status != 0:
        checker.violation(f"the last child exited with {status}: {_log_tail(directory)}")
    loaded = checker.check_journal(killed=False)
    for key in sorted(checker.asked - checker.durable_finished, key=_index):
        checker.violation(f"{key} never finished")
    for key in sorted(checker.asked - checker.result_seen, key=_index):
        checker.violation(f"wait({key}) never returned")
    if loaded is not None:
        records = loaded.tasks.values()
        summary.completed = sum(r.status is Status.COMPLETED for r in records)
        summary.failed = sum(r.status is Status.FAILED for r in records)
        summary.max_attempts = max((r.attempts for r in records), default=0)
    summary.seconds = time.monotonic() - began
    return summary


def _seed() -> int:
    return int(os.environ.get("HARNPOOL_CRASH_SEED") or random.SystemRandom().getrandbits(32))


def _check(summary: Summary, report_figures: ReportFigures, title: str) -> None:
    figures = summary.figures()
    report_figures(title, figures)
    print(title, figures)
    violations = summary.checker.violations
    assert not violations, f"seed {summary.seed}: " + "\n".join(violations[:30])
    assert summary.checker.acks > 0
    assert summary.completed > 0
    assert summary.failed > 0


@pytest.mark.parametrize("start", ["strict", "eager"])
def test_crash_loop_loses_nothing_and_reruns_nothing_finished(
    tmp_path: Path, report_figures: ReportFigures, start: str
) -> None:
    summary = crash_loop(tmp_path, kills=50, seed=_seed(), start=start)
    _check(summary, report_figures, f"crash loop (50 kills, start={start})")
    assert summary.kills == 50


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_crash_loop_survives_a_thousand_kills(
    tmp_path: Path, report_figures: ReportFigures
) -> None:
    summary = crash_loop(tmp_path, kills=1000, seed=_seed())
    _check(summary, report_figures, "crash loop (1000 kills)")
    assert summary.kills == 1000
