"""mypy refuses wrong calls to the typed API: each marked line of wrong_calls.py, with its code.

Only line numbers and error codes are compared, never mypy's wording.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WRONG = Path(__file__).with_name("wrong_calls.py")
MARK = re.compile(r"# error: ([\w-]+(?:, [\w-]+)*)$")


def expected_errors() -> dict[int, set[str]]:
    expected = {}
    for number, line in enumerate(WRONG.read_text().splitlines(), start=1):
        found = MARK.search(line)
        if found:
            expected[number] = set(found.group(1).split(", "))
    return expected


def test_mypy_reports_every_wrong_call_and_nothing_else() -> None:
    expected = expected_errors()
    assert len(expected) >= 10  # the markers were found
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            # The project's cache: what `make typecheck` checked is not checked again.
            str(ROOT / ".mypy_cache"),
            "--no-error-summary",
            "--output",
            "json",
            str(WRONG.relative_to(ROOT)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # 1: errors found; 2 would be mypy failing
    reported: dict[int, set[str]] = {}
    for line in done.stdout.splitlines():
        error = json.loads(line)
        assert Path(error["file"]).resolve() == WRONG, error
        if error["severity"] == "error":
            reported.setdefault(error["line"], set()).add(error["code"])
    assert set(reported) == set(expected)
    for number, codes in expected.items():
        assert codes <= reported[number], (number, codes, reported[number])
