"""Shared plumbing for the benchmark scripts: options, journal directory, fsync
counting, tables and JSON results.

Every scenario module defines ``NAME``, ``HEADLINE`` (the metric its median run
is chosen by) and ``run_once(cfg) -> Result``; :func:`measure` repeats it,
keeps the median run, prints its table and writes ``<out>/<NAME>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

import harnpool
from harnpool import _journal

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

#: Filesystems where fsync costs nothing: numbers measured there mean nothing.
_MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs", "overlay-tmpfs"})

Row = dict[str, Any]


@dataclass(slots=True)
class Config:
    """How one invocation runs: sizes, repeats, and where things go."""

    quick: bool
    runs: int
    out: Path
    journal_root: Path
    #: Free-form notes a scenario adds about its own setup.
    notes: list[str] = field(default_factory=list)

    def scratch(self, name: str) -> Path:
        """Return a fresh, empty directory for one contender's files."""
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.journal_root))


@dataclass(slots=True)
class Result:
    """One run of a scenario: its table rows and its key figures."""

    rows: list[Row]
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)


def filesystem_of(path: Path) -> tuple[str, str]:
    """Return ``(mount point, filesystem type)`` of the mount holding ``path``."""
    target = os.path.realpath(path)
    best = ("/", "unknown")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mount_point = left.split()[4]
            fstype = right.split()[0]
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best[0]):
                best = (mount_point, fstype)
    return best


def choose_journal_root(requested: str | None) -> Path:
    """Pick a directory on a real disk for journals: never a memory filesystem."""
    candidates = [requested] if requested else [tempfile.gettempdir(), "/var/tmp", str(BENCH_DIR)]
    for candidate in candidates:
        if candidate is None or not os.path.isdir(candidate):
            continue
        _, fstype = filesystem_of(Path(candidate))
        if fstype not in _MEMORY_FILESYSTEMS:
            return Path(tempfile.mkdtemp(prefix="harnpool-bench-", dir=candidate))
    raise SystemExit(f"no directory on a real disk among {candidates}: pass --journal-dir")


def parser(description: str | None) -> argparse.ArgumentParser:
    """The options every script takes."""
    p = argparse.ArgumentParser(description=(description or "").strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the tests")
    p.add_argument("--runs", type=int, default=None, help="repeats; the median run is kept")
    p.add_argument("--out", default=str(RESULTS_DIR), help="directory for the JSON results")
    p.add_argument("--journal-dir", default=None, help="where journals go (a real disk)")
    return p


def config_from(args: argparse.Namespace) -> Config:
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return Config(
        quick=args.quick, runs=runs, out=out, journal_root=choose_journal_root(args.journal_dir)
    )


def _source() -> dict[str, Any]:
    """The commit harnpool was imported from, and whether its files differ from it."""
    package = os.path.dirname(harnpool.__file__)
    try:
        commit = subprocess.run(
            ["git", "-C", package, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", package, "diff", "--quiet", "HEAD", "--", "."]
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return {"harnpool_commit": None, "harnpool_modified": None}
    return {"harnpool_commit": commit, "harnpool_modified": dirty != 0}


def environment(cfg: Config) -> dict[str, Any]:
    """What the numbers depend on, recorded beside them."""
    mount, fstype = filesystem_of(cfg.journal_root)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "harnpool": harnpool.__version__,
        "harnpool_path": os.path.dirname(harnpool.__file__),
        **_source(),
        "msgspec": msgspec.__version__,
        "journal_dir": str(cfg.journal_root),
        "journal_mount": mount,
        "journal_filesystem": fstype,
        "quick": cfg.quick,
        "runs": cfg.runs,
    }


class FsyncCounter:
    """Counts the journal's fdatasync calls by wrapping the function it calls."""

    def __init__(self) -> None:
        self.calls = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[FsyncCounter]:
        original = _journal._sync_data

        def counting(fd: int) -> None:
            self.calls += 1
            original(fd)

        _journal._sync_data = counting
        try:
            yield self
        finally:
            _journal._sync_data = original


async def noop(*args: object) -> None:
    """The task every throughput scenario runs: an async function that does nothing."""


def timed() -> Callable[[], float]:
    """Return a function giving the seconds since this call."""
    gc.collect()
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def _format(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:,.2f}"
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def table(rows: list[Row], title: str) -> str:
    """Render rows (dicts sharing keys) as an aligned text table."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    cells = [[_format(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def measure(
    cfg: Config, name: str, doc: str | None, headline: str, run_once: Callable[[Config], Result]
) -> dict[str, Any]:
    """Run a scenario ``cfg.runs`` times, keep the median run, print it, write its JSON."""
    results = [run_once(cfg) for _ in range(cfg.runs)]
    values = [r.metrics[headline] for r in results]
    median = statistics.median_low(values)
    kept = results[values.index(median)]
    title = (doc or name).strip().splitlines()[0]
    print(table(kept.rows, f"\n{name}: {title} (median of {cfg.runs} by {headline})"))
    for note in kept.notes:
        print(f"  note: {note}")
    document: dict[str, Any] = {
        "name": name,
        "description": (doc or "").strip(),
        "headline": headline,
        "runs": values,
        "metrics": kept.metrics,
        "rows": kept.rows,
        "notes": kept.notes,
        "environment": environment(cfg),
    }
    (cfg.out / f"{name}.json").write_bytes(msgspec.json.format(msgspec.json.encode(document)))
    return document


def cleanup(cfg: Config) -> None:
    """Remove the journals this invocation made."""
    shutil.rmtree(cfg.journal_root, ignore_errors=True)


def main(name: str, doc: str | None, headline: str, run_once: Callable[[Config], Result]) -> None:
    """Entry point for a single scenario script."""
    cfg = config_from(parser(doc).parse_args())
    try:
        measure(cfg, name, doc, headline, run_once)
    finally:
        cleanup(cfg)
