"""A process of the PostgreSQL process tests: a worker, or a submit-only client.

Run as ``python _pg_worker_child.py CONFIG_JSON`` (a :class:`Config`), with the
ledger's DSN in ``HARNPOOL_TEST_LEDGER_DSN``. Every process opens the same pool
by DSN and name with ``harnpool.open_pool``.

A worker (``workers`` > 0) prints ``ready`` once its pool is open and runs the
pool's tasks until SIGTERM (or SIGKILL). The submitter (``workers=0``) prints
``ready``, then submits tasks ``<pool>-<i>``, writing ``hp_acked`` once each
submit returned, and waits for them, writing ``hp_result`` with the type and
value each wait returned. With ``tasks`` > 0 it submits that many and waits for
all; with ``tasks=0`` it submits batches of ``batch``, waiting for the oldest tasks
whenever more than ``ahead`` batches are unfinished, until its stdin is closed,
then waits for the rest.
It prints ``done <n> <r>`` and exits 0 once every wait returned, ``r`` being
how many times a wait raised DatabaseError and was called again
(``retry_wait``; without it, the error ends the process).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

import anyio
import msgspec
import structlog

import harnpool
from tests.reliability import _pg_tasks


class Config(msgspec.Struct, frozen=True, kw_only=True):
    dsn: str
    pool: str
    max_concurrent: int
    workers: int
    lease: float
    max_recoveries: int = 5
    tasks: int = 0
    batch: int = 6
    ahead: int = 4
    #: Call wait() again when it raises DatabaseError (the database was unreachable).
    retry_wait: bool = False


def say(text: str) -> None:
    print(text, flush=True)


async def run_worker(config: Config) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with harnpool.open_pool(
            config.dsn,
            name=config.pool,
            max_concurrent=config.max_concurrent,
            workers=config.workers,
            lease=config.lease,
            max_recoveries=config.max_recoveries,
        ):
            say("ready")
            async for _ in signals:
                break


async def run_submitter(config: Config) -> None:
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    async with harnpool.open_pool(
        config.dsn,
        name=config.pool,
        max_concurrent=config.max_concurrent,
        workers=0,
        lease=config.lease,
    ) as pool:
        say("ready")

        async def submit(index: int) -> tuple[str, str]:
            key = f"{config.pool}-{index}"
            fn = _pg_tasks.function_for(index)
            task_id = await pool.submit(fn, config.pool, key, _pg_tasks.millis(index), key=key)
            await anyio.to_thread.run_sync(
                _pg_tasks.execute,
                "INSERT INTO hp_acked (pool, key, task_id) VALUES (%s, %s, %s)",
                (config.pool, key, task_id),
            )
            return key, task_id

        async def wait(key: str, task_id: str) -> None:
            while True:
                try:
                    result = await pool.wait(task_id)
                    break
                except harnpool.DatabaseError as exc:
                    if not config.retry_wait:
                        raise
                    print(f"wait({task_id}) raised {exc!r}; waiting again", file=sys.stderr)
                    retried.append(task_id)
            await anyio.to_thread.run_sync(
                _pg_tasks.execute,
                "INSERT INTO hp_result (pool, key, type, value) VALUES (%s, %s, %s, %s)",
                (config.pool, key, type(result).__name__, msgspec.json.encode(result).decode()),
            )

        waited = 0
        retried: list[str] = []
        if config.tasks:
            submitted = [await submit(i) for i in range(config.tasks)]
        else:
            submitted, index = [], 0
            while not stop.is_set():
                submitted += [await submit(index + i) for i in range(config.batch)]
                index += config.batch
                # Keep `ahead` batches in flight: a task a kill held up does not stall the rest.
                while len(submitted) - waited > config.ahead * config.batch:
                    await wait(*submitted[waited])
                    waited += 1
        for key, task_id in submitted[waited:]:
            await wait(key, task_id)
        say(f"done {len(submitted)} {len(retried)}")


def main(config: Config) -> None:
    # The pool's warnings and errors go to stderr, the test's log of its children.
    structlog.configure(
        processors=[
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.CallsiteParameterAdder(
                [structlog.processors.CallsiteParameter.PROCESS]
            ),
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "process", "event"]),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        context_class=dict,
    )
    if config.workers:
        anyio.run(run_worker, config)
    else:
        anyio.run(run_submitter, config)


if __name__ == "__main__":
    main(msgspec.json.decode(sys.argv[1], type=Config))
