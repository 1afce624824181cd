"""A child that opens a pool and SIGKILLs itself at a chosen step of opening it.

Run as ``python _crash_compact.py JOURNAL STEP MODE``. Every ``open``, ``write``,
``fsync``, ``close`` and ``replace`` that ``harnpool._journal`` makes is a step,
numbered from 1. With ``STEP`` 0 nothing is killed and the steps are printed, on
the last line of stdout, as a JSON list of ``[name, path or fd]``. Otherwise, at
step ``STEP`` the process kills itself with SIGKILL: before the call with ``MODE``
``before``, or, for a write, after writing only the first half of the bytes with
``MODE`` ``partial``.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import anyio
import msgspec

import harnpool
from harnpool import _journal


class Stepper:
    """Stands in for ``os`` inside ``harnpool._journal``; counts calls and dies on cue."""

    def __init__(self, kill_at: int, mode: str) -> None:
        self.kill_at = kill_at
        self.mode = mode
        self.steps: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _step(self, name: str, what: object) -> None:
        self.steps.append((name, str(what)))
        if len(self.steps) == self.kill_at and self.mode == "before":
            os.kill(os.getpid(), signal.SIGKILL)

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        self._step("open", os.path.basename(path))
        return os.open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._step("write", fd)
        if len(self.steps) == self.kill_at and self.mode == "partial":
            os.write(fd, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        self._step("fsync", fd)
        os.fsync(fd)

    def close(self, fd: int) -> None:
        self._step("close", fd)
        os.close(fd)

    def replace(self, src: str, dst: str) -> None:
        self._step("replace", f"{os.path.basename(src)} {os.path.basename(dst)}")
        os.replace(src, dst)


async def _open_and_close(journal: str) -> None:
    async with harnpool.open_pool(journal, max_concurrent=2):
        pass


def main(argv: list[str]) -> None:
    journal, step, mode = argv
    stepper = Stepper(int(step), mode)
    setattr(_journal, "os", stepper)  # noqa: B010 - the journal module's os, for this process
    anyio.run(_open_and_close, journal)
    if stepper.kill_at == 0:
        # The last line: structlog's events may come before it on stdout.
        sys.stdout.write("\n" + msgspec.json.encode(stepper.steps).decode() + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
