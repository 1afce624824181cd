"""The test suite's own guarantees: a hang fails with a stack instead of blocking CI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_hanging_test_fails_under_the_projects_deadline_and_shows_where(tmp_path: Path) -> None:
    # The project's own pytest configuration, with only the deadline shortened.
    (tmp_path / "test_hang.py").write_text(
        textwrap.dedent(
            """
            import threading

            def test_hangs_forever():
                threading.Event().wait()
            """
        )
    )
    config = (ROOT / "pyproject.toml").read_text()
    assert "\ntimeout = " in config, "pyproject.toml sets no test deadline"
    (tmp_path / "pyproject.toml").write_text(config.replace("\ntimeout = ", "\ntimeout = 1 # ", 1))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_hang.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "test_hang.py:5" in done.stdout, done.stdout  # the line it hung on
    assert "1 failed" in done.stdout, done.stdout
