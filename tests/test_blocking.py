"""The event loop never blocks on file I/O: blockbuster fails any blocking call made on it."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster, BlockBusterFunction, BlockingError, blockbuster_ctx

import harnpool
from harnpool import Job

# blockbuster watches the asyncio event loop's thread.
pytestmark = pytest.mark.asyncio_only


@pytest.fixture
def blockbuster() -> Iterator[BlockBuster]:
    """blockbuster, also watching the calls a journal makes that it does not watch itself."""
    with blockbuster_ctx() as bb:
        extra = {
            f"os.{name}": BlockBusterFunction(os, name)
            for name in ("fsync", "fdatasync", "open", "close", "pwrite", "ftruncate", "pread")
        }
        extra["fcntl.flock"] = BlockBusterFunction(fcntl, "flock")
        for function in extra.values():
            function.activate()
        bb.functions.update(extra)
        yield bb


async def job(n: int) -> int:
    return n + 1


def sync_job(n: int) -> int:
    return n - 1


async def test_the_watch_catches_a_blocking_fsync_on_the_loop(
    blockbuster: BlockBuster, tmp_path: Path
) -> None:
    blockbuster.deactivate()
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    blockbuster.activate()
    try:
        with pytest.raises(BlockingError):
            os.fsync(fd)
        with pytest.raises(BlockingError):
            os.fdatasync(fd)
        with pytest.raises(BlockingError):
            os.write(fd, b"x")
    finally:
        blockbuster.deactivate()
        os.close(fd)


async def test_open_submit_wait_and_close_never_block_the_loop(
    blockbuster: BlockBuster, journal_path: Path
) -> None:
    async with harnpool.open_pool(journal_path, max_concurrent=4) as pool:
        ids: list[str] = [await pool.submit(job, n, key=f"k{n}") for n in range(20)]
        ids += await pool.submit_many(Job(sync_job, n) for n in range(20))
        assert await pool.submit(job, 0, key="k0") == ids[0]
        results = [await pool.wait(task_id) for task_id in ids]
    assert results == [n + 1 for n in range(20)] + [n - 1 for n in range(20)]
    async with harnpool.open_pool(journal_path) as pool:  # replay and compaction too
        assert await pool.wait(ids[5]) == 6
