"""A child that keeps a pool busy until its journal compacts itself, and stops at a chosen point.

Usage: ``python _online_compact_child.py JOURNAL LEDGER POINT KEEP``

The pool compacts its journal while open once it holds a few dozen lines, and it
submits tasks without end: most return at once, and two of them hang in two of
the three worker slots. At ``POINT`` of the first online compaction the thread
doing it writes ``point POINT`` to the ledger and blocks, for the parent to
SIGKILL the process there:

- ``writing``: the compaction's thread has written half of a piece of the new file;
- ``catching-up``: the compaction's thread has copied half of what was appended meanwhile;
- ``switching``: the writer, between two flushes, has copied half of what was left;
- ``renamed``: the new file is renamed over the journal, the directory not yet synced.

While ``writing`` and ``catching-up`` block, the pool goes on submitting and
finishing tasks into the old file. Ledger lines, as ``_kill_point_child.py``'s:
``acked KEY ID``, ``start KEY``, ``result KEY VALUE``. ``KEEP`` is the pool's
``keep_finished``, or ``none``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import anyio

import harnpool
from harnpool import _journal

LEDGER_FD = -1
POINT = ""
#: Tasks that hang, leaving one worker slot for the rest.
HANGING = {3, 10}


def note(*words: str) -> None:
    os.write(LEDGER_FD, (" ".join(words) + "\n").encode())


def stop_here(point: str) -> None:
    """Note the point and block this thread until the parent kills the process."""
    note("point", point)
    threading.Event().wait()


def on(thread: str) -> bool:
    return threading.current_thread().name.startswith(thread)


_write_all = _journal._write_all
_catch_up = _journal._Compaction.catch_up
_fsync_dir = _journal._fsync_dir


WRITES = [0]


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    if POINT == "catching-up" and on("harnpool-compaction"):
        time.sleep(0.05)  # a slow disk: the pool appends meanwhile, for the thread to copy
    if POINT == "writing" and on("harnpool-compaction"):
        WRITES[0] += 1
    # The second write: the header is written, and half of the first records.
    if POINT == "writing" and on("harnpool-compaction") and WRITES[0] == 2 and len(data) > 1:
        _write_all(fd, memoryview(data)[: len(data) // 2])
        stop_here(POINT)
    _write_all(fd, data)


def catch_up(self: _journal._Compaction, end: int) -> None:
    thread = {"catching-up": "harnpool-compaction", "switching": "harnpool-journal"}.get(POINT)
    if thread is not None and on(thread) and end - self.copied > 1:
        _catch_up(self, self.copied + (end - self.copied) // 2)
        stop_here(POINT)
    _catch_up(self, end)


def fsync_dir(directory: str) -> None:
    if POINT == "renamed" and on("harnpool-journal"):
        stop_here(POINT)
    _fsync_dir(directory)


async def work(key: str, n: int) -> dict[str, Any]:
    note("start", key)
    if n in HANGING:
        await anyio.sleep_forever()
    return {"key": key, "square": n * n}


async def wait_one(pool: harnpool.Pool, key: str, task_id: str) -> None:
    result = await pool.wait(task_id)
    note("result", key, str(result["square"]))


async def main(journal: str, keep: int | None) -> None:
    async with (
        harnpool.open_pool(journal, max_concurrent=3, keep_finished=keep) as pool,
        anyio.create_task_group() as tg,
    ):
        n = 0
        while True:
            key = f"k{n}"
            task_id = await pool.submit(work, key, n, key=key)
            note("acked", key, task_id)
            tg.start_soon(wait_one, pool, key, task_id)
            n += 1


if __name__ == "__main__":
    journal, ledger, POINT, keep = sys.argv[1:5]
    LEDGER_FD = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _journal.COMPACT_MIN_LINES = 30
    # A task here costs two lines when its start and end share a flush: one dead
    # line per live one, which would never outnumber them.
    _journal.COMPACT_DEAD_PER_LIVE = 0.5
    # Whatever is appended meanwhile is copied by the compaction's thread only
    # when that is the point to stop at; otherwise the writer copies it all.
    _journal._CATCH_UP_LEFT = 0 if POINT == "catching-up" else 1 << 30
    _journal._write_all = write_all
    _journal._Compaction.catch_up = catch_up  # type: ignore[method-assign]
    _journal._fsync_dir = fsync_dir
    anyio.run(main, journal, None if keep == "none" else int(keep))
