"""A pool's tasks as rows of a PostgreSQL table, shared by many processes and hosts.

Every method is a plain blocking call taking and returning
:class:`~harnpool._records.TaskRecord` values, so the async pool runs them in
threads (``anyio.to_thread.run_sync`` with a limiter of its own): psycopg's
async API needs a running asyncio loop and fails under trio, its sync API in
threads works under both. The store keeps up to ``connections`` connections,
one per thread using it at once; size the limiter to match.

What the rows guarantee:

* Each method is one transaction: when it returns, what it wrote is committed
  (durable as the server's ``synchronous_commit`` makes it); when it raises,
  nothing it would have written is stored.
* One key space per pool: the ``(pool, key)`` constraint is not partial, so a
  key that finished is never run again, whichever process submits it.
* ``max_concurrent`` holds across processes: a claim first takes the pool's
  advisory lock in a statement of its own, so the statement that counts the
  running tasks and claims the free slots sees every claim committed before it
  (READ COMMITTED takes a snapshot per statement: with the lock in the same
  statement, two claimers counted the same running tasks and overshot).
* A task runs under a lease its owner renews; once the lease has expired the
  next claim puts the task back in the queue and counts a recovery.
* An outcome is written only by the owner of the current attempt: ``finish``
  and ``requeue_for_retry`` match status, attempt and owner, and a stale
  owner's write changes nothing. Side effects are at least once; recorded
  outcomes exactly once.
* Every time stored is the database's clock, so the hosts' clocks need not agree:
  a new task's delay is counted from the inserting statement's time; only a
  ``not_before`` given as an absolute time is stored as given.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from .._errors import DatabaseError, PoolClosedError, UnknownTaskError
from .._records import Status, TaskRecord
from . import _schema

if TYPE_CHECKING:
    from ._listener import Listener

__all__ = [
    "Claim",
    "ClaimRequest",
    "Lease",
    "PostgresStore",
    "Renewal",
    "Written",
    "channel_for",
    "task_seq",
]

_Conn = psycopg.Connection[TupleRow]

_INT64 = range(-(2**63), 2**63)

# The TaskRecord fields, in the order _record reads them; times as epoch seconds.
_COLUMNS: Final = (
    "seq, status, date_part('epoch', submitted_at), priority, key, function,"
    " date_part('epoch', started_at), date_part('epoch', finished_at), attempts, result,"
    " error_type, error_message, name, args, task_group, retries, retry_on, timeout,"
    " date_part('epoch', not_before), reason, recoveries"
)

_LOCK: Final = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"

_NUMBER: Final = (
    "SELECT nextval(pg_get_serial_sequence('harnpool_task', 'seq')) FROM generate_series(1, %s)"
)

_INSERT: Final = f"""
INSERT INTO harnpool_task (seq, pool, key, status, priority, retries, retry_on, timeout,
    not_before, task_group, function, name, args, submitted_at)
VALUES (%s, %s, %s, 'queued', %s, %s, %s::text[], %s,
    coalesce(to_timestamp(%s), statement_timestamp() + make_interval(secs => %s::float8)),
    %s, %s, %s, %s, statement_timestamp())
ON CONFLICT (pool, key) DO NOTHING
RETURNING {_COLUMNS}
"""

# A task whose lease expired goes back to the queue at its old place, unless
# cancelling it was asked (then it is cancelled) or it has used up its recoveries.
# A row another transaction holds is skipped (its owner is finishing it, or
# another claimer reclaims it): whoever holds the pool's lock never waits for a
# row, so a group that holds rows and waits for the lock cannot deadlock with it.
_RECLAIM: Final = f"""
WITH expired AS (
    UPDATE harnpool_task SET
        recoveries = recoveries + 1,
        status = CASE WHEN cancel_requested THEN 'cancelled'
                      WHEN recoveries >= %(max_recoveries)s THEN 'failed'
                      ELSE 'queued' END,
        finished_at = CASE WHEN cancel_requested OR recoveries >= %(max_recoveries)s
                           THEN statement_timestamp() END,
        started_at = CASE WHEN cancel_requested OR recoveries >= %(max_recoveries)s
                          THEN started_at END,
        reason = CASE WHEN cancel_requested THEN 'cancelled'
                      WHEN recoveries >= %(max_recoveries)s THEN 'lease_expired'
                      ELSE reason END,
        error_type = CASE WHEN NOT cancel_requested AND recoveries >= %(max_recoveries)s
                          THEN 'harnpool.LeaseExpired' ELSE error_type END,
        error_message = CASE WHEN NOT cancel_requested AND recoveries >= %(max_recoveries)s
                             THEN 'its lease expired ' || (recoveries + 1)
                                  || ' times: the processes running it died or lost the database'
                             ELSE error_message END,
        owner = NULL,
        lease_until = NULL
    WHERE pool = %(pool)s AND status = 'running' AND lease_until < statement_timestamp()
        AND seq = any(array(
            SELECT seq FROM harnpool_task
            WHERE pool = %(pool)s AND status = 'running' AND lease_until < statement_timestamp()
            FOR UPDATE SKIP LOCKED))
    RETURNING *
)
SELECT {_COLUMNS}, CASE WHEN status = 'queued' THEN pg_notify(%(channel)s, 'queued')::text END
FROM expired
"""

# The count of running tasks and the pick are one statement, after the lock
# and the reclaim (each a statement of its own: it sees what they did).
# The join back is `seq = any(array(...))`: a join on the CTE made the planner
# hash the whole table.
_CLAIM: Final = f"""
WITH picked AS (
    SELECT seq FROM harnpool_task
    WHERE pool = %(pool)s AND status = 'queued'
        AND (not_before IS NULL OR not_before <= statement_timestamp())
    ORDER BY priority DESC, seq
    LIMIT greatest(0, least(%(limit)s, %(max_concurrent)s - (
        SELECT count(*) FROM harnpool_task WHERE pool = %(pool)s AND status = 'running')))
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE harnpool_task SET
        status = 'running',
        attempts = attempts + 1,
        owner = %(owner)s,
        lease_until = statement_timestamp() + make_interval(secs => %(lease)s),
        started_at = statement_timestamp(),
        not_before = NULL
    WHERE seq = any(array(SELECT seq FROM picked))
    RETURNING *
)
SELECT {_COLUMNS} FROM claimed ORDER BY priority DESC, seq
"""

_RUNNING: Final = """
SELECT count(*) >= %(max_concurrent)s FROM harnpool_task
WHERE pool = %(pool)s AND status = 'running'
"""

_RENEW: Final = """
UPDATE harnpool_task SET lease_until = statement_timestamp() + make_interval(secs => %(lease)s)
WHERE pool = %(pool)s AND status = 'running' AND owner = %(owner)s
RETURNING seq, cancel_requested
"""

# Outcomes of one group, one row each in the arrays; only the owner of the
# current attempt may record one: a stale row matches nothing and is left out.
# Cancelling asked while the attempt ran wins over its failure, as over a retry.
_FINISH: Final = f"""
WITH v AS (
    SELECT * FROM unnest(%(seq)s::bigint[], %(attempts)s::int[], %(status)s::text[],
        %(reason)s::text[], %(result)s::text[], %(error_type)s::text[],
        %(error_message)s::text[]) AS v(seq, attempts, status, reason, result, error_type,
        error_message)
), done AS (
    UPDATE harnpool_task AS t SET
        status = CASE WHEN t.cancel_requested AND v.status = 'failed' THEN 'cancelled'
                      ELSE v.status END,
        reason = CASE WHEN t.cancel_requested AND v.status = 'failed' THEN 'cancelled'
                      ELSE v.reason END,
        result = v.result, error_type = v.error_type, error_message = v.error_message,
        finished_at = statement_timestamp(), owner = NULL, lease_until = NULL
    FROM v
    WHERE t.pool = %(pool)s AND t.seq = v.seq AND t.status = 'running'
        AND t.attempts = v.attempts AND t.owner = %(owner)s
    RETURNING t.*
)
SELECT {_COLUMNS} FROM done
"""

_REQUEUE: Final = f"""
WITH v AS (
    SELECT * FROM unnest(%(seq)s::bigint[], %(attempts)s::int[], %(delay)s::float8[],
        %(error_type)s::text[], %(error_message)s::text[])
        AS v(seq, attempts, delay, error_type, error_message)
), done AS (
    UPDATE harnpool_task AS t SET
        status = CASE WHEN t.cancel_requested THEN 'cancelled' ELSE 'queued' END,
        finished_at = CASE WHEN t.cancel_requested THEN statement_timestamp() END,
        reason = CASE WHEN t.cancel_requested THEN 'cancelled' ELSE t.reason END,
        started_at = CASE WHEN t.cancel_requested THEN t.started_at END,
        not_before = CASE WHEN t.cancel_requested THEN NULL
                          ELSE statement_timestamp() + make_interval(secs => v.delay) END,
        error_type = v.error_type, error_message = v.error_message,
        owner = NULL, lease_until = NULL
    FROM v
    WHERE t.pool = %(pool)s AND t.seq = v.seq AND t.status = 'running'
        AND t.attempts = v.attempts AND t.owner = %(owner)s
    RETURNING t.*
)
SELECT {_COLUMNS} FROM done
"""

#: The longest payload sent in one notification (PostgreSQL's limit is 8000 bytes).
_PAYLOAD: Final = 7900

_CANCEL: Final = f"""
WITH done AS (
    UPDATE harnpool_task SET
        status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
        finished_at = CASE WHEN status = 'queued' THEN statement_timestamp() ELSE finished_at END,
        reason = CASE WHEN status = 'queued' THEN 'cancelled' ELSE reason END,
        cancel_requested = cancel_requested OR status = 'running'
    WHERE pool = %(pool)s AND seq = %(seq)s AND status IN ('queued', 'running')
    RETURNING *
)
SELECT {_COLUMNS},
    pg_notify(%(channel)s, CASE WHEN status = 'running' THEN 'cancel t' ELSE 'finished t' END
                           || seq)::text
FROM done
"""


_FINAL_STATUSES: Final = frozenset(
    {Status.COMPLETED, Status.FAILED, Status.REJECTED, Status.CANCELLED}
)
_FINAL: Final = "status IN ('completed', 'failed', 'rejected', 'cancelled')"

# Finished tasks beyond the newest `keep`, or finished more than `keep_for` seconds ago.
# Two sets joined by UNION, each evaluated once: as `OR seq IN (...)` the sort
# beyond `keep` ran again for every finished row, and never ended at 1M rows.
_PRUNE: Final = f"""
DELETE FROM harnpool_task WHERE pool = %(pool)s AND seq = any(array(
    SELECT seq FROM harnpool_task WHERE pool = %(pool)s AND {_FINAL}
        AND finished_at < statement_timestamp() - make_interval(secs => %(keep_for)s::float8)
    UNION
    SELECT seq FROM (
        SELECT seq FROM harnpool_task WHERE pool = %(pool)s AND {_FINAL}
        ORDER BY finished_at DESC, seq DESC OFFSET %(keep)s::bigint
    ) AS beyond WHERE %(keep)s::bigint IS NOT NULL))
"""


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """What one claim did.

    Attributes:
        started: The tasks claimed, now ``running`` under the claimer's lease,
            highest priority first, then in submission order.
        recovered: Tasks whose lease had expired: queued again (``recoveries``
            went up), or ``cancelled`` if cancelling was asked, or ``failed``
            once they had used up ``max_recoveries``.
        at_limit: Whether ``max_concurrent`` tasks of the pool ran once the
            claim was done: a finished task then frees a slot to claim.
    """

    started: list[TaskRecord]
    recovered: list[TaskRecord]
    at_limit: bool = False


class ClaimRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A claim's arguments; see :meth:`PostgresStore.claim`."""

    limit: int
    lease: float
    max_concurrent: int
    max_recoveries: int | None = None


class Written(msgspec.Struct, frozen=True, kw_only=True):
    """What one group's transaction stored; see :meth:`PostgresStore.write`.

    Attributes:
        submitted: For each submit of the group, in order, what
            :meth:`PostgresStore.submit_marked` returns for it.
        outcomes: For each outcome of the group, in order, the stored record,
            or None if the attempt was no longer the owner's (discarded).
        claim: What the group's claim did, if it asked for one.
    """

    submitted: list[list[tuple[TaskRecord, bool]]]
    outcomes: list[TaskRecord | None]
    claim: Claim | None = None


class Renewal(msgspec.Struct, frozen=True, kw_only=True):
    """What renewing an owner's leases found.

    Attributes:
        owned: Ids of the tasks the owner still runs; a task it runs that is
            missing lost its lease to another claimer and must stop.
        cancel_requested: Those of ``owned`` whose cancelling was asked.
    """

    owned: frozenset[str]
    cancel_requested: frozenset[str]


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """The sharing state of one task, beside its record.

    Attributes:
        owner: Who runs it, while it is running.
        lease_until: When its lease ends (epoch seconds, the database's clock).
        recoveries: How many runs a lost lease interrupted.
        cancel_requested: Whether cancelling it was asked while it ran.
    """

    owner: str | None
    lease_until: float | None
    recoveries: int
    cancel_requested: bool


def task_seq(task_id: str) -> int | None:
    """The ``seq`` in a task id ``t<seq>``, or None if it is not one."""
    digits = task_id[1:]
    if not task_id.startswith("t") or not digits.isascii() or not digits.isdigit():
        return None
    seq = int(digits)
    return seq if 0 < seq < 2**63 else None


def channel_for(name: str) -> str:
    """The pool's notification channel: a short identifier, whatever the pool's name."""
    return "harnpool_" + hashlib.blake2b(name.encode(), digest_size=8).hexdigest()


def _finished_notices(task_ids: Iterable[str]) -> list[str]:
    """``finished t<seq> t<seq> ...`` payloads naming ``task_ids``, each short enough to send."""
    notices: list[str] = []
    payload = ""
    for task_id in task_ids:
        if len(payload) + 1 + len(task_id) > _PAYLOAD:
            notices.append(payload)
            payload = ""
        payload = f"{payload} {task_id}" if payload else f"finished {task_id}"
    if payload:
        notices.append(payload)
    return notices


def _json(value: msgspec.Raw | msgspec.UnsetType) -> str | None:
    return None if isinstance(value, msgspec.UnsetType) else bytes(value).decode()


def _fields(record: TaskRecord, delay: float | None) -> tuple[Any, ...]:
    """A new task's columns, in _INSERT's order after seq and pool."""
    return (
        record.key,
        record.priority,
        record.retries,
        None if record.retry_on is None else list(record.retry_on),
        record.timeout,
        record.not_before,
        delay or None,
        record.group,
        record.function,
        record.name,
        _json(record.args),
    )


def _record(row: TupleRow) -> TaskRecord:
    (seq, status, submitted, priority, key, function, started, finished, attempts, result,
     error_type, error_message, name, args, group, retries, retry_on, timeout, not_before,
     reason, recoveries) = row[:21]  # fmt: skip
    return TaskRecord(
        id=f"t{seq}",
        seq=seq,
        status=Status(status),
        submitted_at=submitted,
        priority=priority,
        key=key,
        function=function,
        started_at=started,
        finished_at=finished,
        attempts=attempts,
        result=msgspec.UNSET if result is None else msgspec.Raw(result.encode()),
        error_type=error_type,
        error_message=error_message,
        name=name,
        args=msgspec.UNSET if args is None else msgspec.Raw(args.encode()),
        group=group,
        retries=retries,
        retry_on=None if retry_on is None else tuple(retry_on),
        timeout=timeout,
        not_before=not_before,
        reason=reason,
        recoveries=recoveries,
    )


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def _check_seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and not negative, not {value}")
    return float(value)


def _check_delays(
    submits: Sequence[Sequence[TaskRecord]], delays: Sequence[Sequence[float | None]] | None
) -> list[float | None]:
    """``delays`` flattened as ``submits`` is, each checked: one per record."""
    if delays is None:
        return [None for batch in submits for _ in batch]
    if len(delays) != len(submits) or any(
        len(d) != len(batch) for d, batch in zip(delays, submits, strict=True)
    ):
        raise ValueError("submit_delays must hold one delay for each record of submits")
    return [
        None if delay is None else _check_seconds(delay, "delay")
        for batch in delays
        for delay in batch
    ]


def _check_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value or "\0" in value:
        raise ValueError(f"{name} must be a non-empty string without NUL characters")
    return value


class _Connections:
    """Up to ``size`` connections, opened when first needed, one per thread at a time.

    A connection that broke, or was left inside a transaction, is closed
    rather than handed out again.
    """

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn = dsn
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        #: The server process of each open connection, by connection.
        self._pids: dict[int, int] = {}
        self.closed = False

    def take(self) -> _Conn:
        self._slots.acquire()
        try:
            with self._lock:
                if self.closed:
                    raise PoolClosedError("the PostgreSQL store is closed")
                if self._idle:
                    return self._idle.pop()
            conn = psycopg.connect(self._dsn, autocommit=True, fallback_application_name="harnpool")
            with self._lock:
                self._pids[id(conn)] = conn.info.backend_pid
            return conn
        except BaseException:
            self._slots.release()
            raise

    def pids(self) -> frozenset[int]:
        """The server processes of the open connections."""
        with self._lock:
            return frozenset(self._pids.values())

    def _closing(self, conn: _Conn) -> None:
        # Forgotten before the server process ends: its pid may serve another client next.
        with self._lock:
            self._pids.pop(id(conn), None)
        conn.close()

    def give(self, conn: _Conn) -> None:
        try:
            keep = not (conn.broken or conn.closed) and (
                conn.info.transaction_status is TransactionStatus.IDLE
            )
            if keep:
                with self._lock:
                    keep = not self.closed
                    if keep:
                        self._idle.append(conn)
            if not keep:
                self._closing(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self._closing(conn)


class PostgresStore:
    """One pool's tasks in a PostgreSQL database; every method blocks.

    Open it with :meth:`connect`, create or upgrade the schema with
    :meth:`migrate`, and :meth:`close` it (or use it as a context manager).

    Attributes:
        name: The pool's name: its tasks, keys and limit are its own.
        channel: The channel its notifications go to.
    """

    def __init__(self, dsn: str, name: str, *, connections: int = 4) -> None:
        """Check the arguments; nothing is opened (see :meth:`connect`).

        Raises:
            TypeError, ValueError: An argument has the wrong type or value.
        """
        self.dsn = _check_text(dsn, "dsn")
        self.name = _check_text(name, "name")
        _check_int(connections, "connections", 1)
        self.channel = channel_for(name)
        #: How many groups :meth:`write` has committed (each one transaction).
        self.groups = 0
        self._connections = _Connections(dsn, connections)

    @classmethod
    def connect(cls, dsn: str, name: str, *, connections: int = 4) -> PostgresStore:
        """Open a store on the database ``dsn`` names, for the pool ``name``.

        Args:
            dsn: A libpq connection string or URI, e.g.
                ``postgresql://user@/db?host=/run/postgresql``.
            name: The pool's name.
            connections: How many connections it may hold open: one per thread
                calling it at once (more threads wait for one to be free).

        Raises:
            TypeError, ValueError: An argument has the wrong type or value.
            DatabaseError: The database cannot be reached.
        """
        store = cls(dsn, name, connections=connections)
        with store._connection("connecting"):
            pass  # one connection now: a wrong DSN fails here, not at the first task
        return store

    def close(self) -> None:
        """Close every idle connection; those in use close when their call ends."""
        self._connections.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._connections.closed else "open"
        return f"<PostgresStore pool={self.name!r} {state}>"

    @contextlib.contextmanager
    def _connection(self, what: str) -> Iterator[_Conn]:
        try:
            conn = self._connections.take()
        except psycopg.Error as exc:
            raise DatabaseError(
                f"pool {self.name!r}: {what} failed: cannot connect: {exc}", pool=self.name
            ) from exc
        try:
            yield conn
        except psycopg.Error as exc:
            raise DatabaseError(
                f"pool {self.name!r}: {what} failed: {exc}", pool=self.name
            ) from exc
        finally:
            self._connections.give(conn)

    # -- schema -----------------------------------------------------------------------

    def migrate(self) -> int:
        """Create or upgrade the schema, in one transaction, and register the pool's name.

        Processes doing it at once wait for each other on an advisory lock.

        Returns:
            The schema version the database had before (0 for none).

        Raises:
            SchemaVersionError: The database's schema is newer than this
                harnpool knows; nothing was changed.
            DatabaseError: The database failed.
        """
        with self._connection("migrating the schema") as conn:
            return _schema.migrate(conn, self.name)

    def schema_version(self) -> int:
        """The database's schema version: 0 when harnpool has not created it."""
        with self._connection("reading the schema version") as conn:
            return _schema.schema_version(conn)

    # -- tasks --------------------------------------------------------------------------

    def submit(
        self, records: Sequence[TaskRecord], delays: Sequence[float | None] | None = None
    ) -> list[TaskRecord]:
        """Store new tasks in one transaction, deduplicated by key, and notify listeners.

        Each record's ``id``, ``seq``, ``status``, ``attempts`` and times are
        ignored: the database numbers the task and stamps ``submitted_at``.
        A record's ``not_before`` (epoch seconds) is stored as given; without
        one, its ``delays`` entry, if any, is counted from the database's clock.

        Args:
            records: The new tasks.
            delays: For each record, seconds it waits before it is due, or None.

        Returns:
            The stored record for each input, in order: the new task, or for a
            key the pool already has (finished or not, or earlier in
            ``records``), the task that holds it.

        Raises:
            TypeError, ValueError: A delay is not a number of seconds (or there
                is not one per record); a record's priority does not fit in 64 bits.
            DatabaseError: The database failed; nothing was stored.
        """
        return [record for record, _ in self.submit_marked(records, delays)]

    def submit_marked(
        self, records: Sequence[TaskRecord], delays: Sequence[float | None] | None = None
    ) -> list[tuple[TaskRecord, bool]]:
        """Store new tasks in one transaction, deduplicated by key, and notify listeners.

        Each record's ``id``, ``seq``, ``status``, ``attempts`` and times are
        ignored: the database numbers the task and stamps ``submitted_at``.

        Returns:
            What :meth:`submit` returns, each record paired with True if
            this call stored it, False if its key was already held.

        Raises:
            TypeError, ValueError: What :meth:`submit` raises.
            DatabaseError: The database failed; nothing was stored.
        """
        delayed = None if delays is None else [delays]
        return self.write(submits=[records], submit_delays=delayed).submitted[0]

    def write(
        self,
        *,
        submits: Sequence[Sequence[TaskRecord]] = (),
        submit_delays: Sequence[Sequence[float | None]] | None = None,
        outcomes: Sequence[tuple[TaskRecord, float]] = (),
        owner: str | None = None,
        claim: ClaimRequest | None = None,
    ) -> Written:
        """Store a group of changes in one transaction: new tasks, and attempts' outcomes.

        This is the pool's group commit: whatever its callers asked for while
        the previous group committed goes into one transaction, with at most
        one notification per kind. Nothing of it is stored unless all of it is.

        Args:
            submits: Lists of new tasks, one per caller, each as for
                :meth:`submit_marked`. Keys are deduplicated across the lists
                too: a later list's record with a key an earlier one stored
                returns that earlier task.
            submit_delays: For each list of ``submits``, each record's delay
                as :meth:`submit` takes it; None for no delays.
            outcomes: Each an attempt's outcome and a delay: a final status is
                recorded as :meth:`finish` does, ``queued`` is a retry due
                ``delay`` seconds from now, as :meth:`requeue_for_retry` does.
                Each is guarded by status, attempt and ``owner``: a stale one
                changes nothing and gets None, the others are still stored.
            owner: Who ran the attempts; required when there are outcomes or
                a claim.
            claim: Also claim tasks for ``owner``, as :meth:`claim` does,
                after the outcomes: a slot they free can be claimed at once.

        Raises:
            TypeError, ValueError: An argument has the wrong type or value;
                nothing was stored.
            DatabaseError: The database failed; nothing was stored.
        """
        records = [record for batch in submits for record in batch]
        delays = _check_delays(submits, submit_delays)
        for record in records:
            if record.priority not in _INT64:
                raise ValueError(
                    f"priority must fit in a signed 64-bit integer, not {record.priority}"
                )
        finishes: list[TaskRecord] = []
        retries: list[tuple[TaskRecord, float]] = []
        who = ""
        if outcomes or claim is not None:
            who = _check_text(owner, "owner")
        claim_params = None if claim is None else self._claim_params(who, claim)
        for record, delay in outcomes:
            if record.status is Status.QUEUED:
                retries.append((record, _check_seconds(delay, "delay")))
            elif record.status in _FINAL_STATUSES:
                finishes.append(record)
            else:
                raise ValueError(
                    f"an outcome takes a final status or 'queued', not {record.status.value!r}"
                )
        if not records and not outcomes and claim_params is None:
            return Written(submitted=[[] for _ in submits], outcomes=[])
        stored: dict[int, TaskRecord] = {}
        notices: list[str] = []
        with self._connection("writing") as conn, conn.transaction(), conn.cursor() as cur:
            marked = self._insert(cur, records, delays)
            if any(new for _, new in marked):
                notices.append("queued")
            if finishes:
                finishes.sort(key=lambda r: r.seq)  # rows locked in one order
                cur.execute(
                    _FINISH,
                    {
                        "pool": self.name,
                        "owner": who,
                        "seq": [r.seq for r in finishes],
                        "attempts": [r.attempts for r in finishes],
                        "status": [r.status.value for r in finishes],
                        "reason": [r.reason for r in finishes],
                        "result": [_json(r.result) for r in finishes],
                        "error_type": [r.error_type for r in finishes],
                        "error_message": [r.error_message for r in finishes],
                    },
                )
                stored.update((r.seq, r) for r in map(_record, cur.fetchall()))
            if retries:
                retries.sort(key=lambda item: item[0].seq)
                cur.execute(
                    _REQUEUE,
                    {
                        "pool": self.name,
                        "owner": who,
                        "seq": [r.seq for r, _ in retries],
                        "attempts": [r.attempts for r, _ in retries],
                        "delay": [delay for _, delay in retries],
                        "error_type": [r.error_type for r, _ in retries],
                        "error_message": [r.error_message for r, _ in retries],
                    },
                )
                requeued = [_record(row) for row in cur.fetchall()]
                stored.update((r.seq, r) for r in requeued)
                if any(r.status is Status.QUEUED for r in requeued):
                    notices.append("queued")
            notices += _finished_notices(
                r.id for r in stored.values() if r.status in _FINAL_STATUSES
            )
            if notices:
                cur.execute(
                    "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p",
                    (self.channel, list(dict.fromkeys(notices))),
                )
            # Last, so the pool's lock is held for as short a time as the group allows.
            claimed = None
            if claim_params is not None:
                with conn.pipeline():
                    claimed = self._claim(conn, claim_params)
        self.groups += 1
        submitted: list[list[tuple[TaskRecord, bool]]] = []
        at = 0
        for batch in submits:
            submitted.append(marked[at : at + len(batch)])
            at += len(batch)
        return Written(
            submitted=submitted,
            outcomes=[stored.get(record.seq) for record, _ in outcomes],
            claim=claimed,
        )

    def _insert(
        self,
        cur: psycopg.Cursor[TupleRow],
        records: Sequence[TaskRecord],
        delays: Sequence[float | None],
    ) -> list[tuple[TaskRecord, bool]]:
        """Insert new tasks in the caller's transaction; what :meth:`submit_marked` returns."""
        if not records:
            return []
        # Numbered in the order given, inserted in key order: two submits
        # that share keys then wait for each other's keys in the same
        # order, and cannot deadlock.
        cur.execute(_NUMBER, (len(records),))
        seqs = sorted(seq for (seq,) in cur.fetchall())
        order = sorted(range(len(records)), key=lambda i: (records[i].key or "", i))
        cur.executemany(
            _INSERT,
            [(seqs[i], self.name, *_fields(records[i], delays[i])) for i in order],
            returning=True,
        )
        inserted: dict[int, TaskRecord] = {}
        while True:
            row = cur.fetchone()
            if row is not None:
                inserted[row[0]] = _record(row)
            if not cur.nextset():
                break
        holders: dict[str | None, TaskRecord] = {}
        missing = [r.key for r, seq in zip(records, seqs, strict=True) if seq not in inserted]
        if missing:
            # A statement of its own: its snapshot sees a key another
            # transaction committed while the insert waited on it.
            cur.execute(
                f"SELECT {_COLUMNS} FROM harnpool_task WHERE pool = %s AND key = any(%s)",
                (self.name, missing),
            )
            holders = {r.key: r for r in map(_record, cur.fetchall())}
        return [
            (inserted[seq], True) if seq in inserted else (holders[record.key], False)
            for record, seq in zip(records, seqs, strict=True)
        ]

    def claim(
        self,
        owner: str,
        *,
        limit: int,
        lease: float,
        max_concurrent: int,
        max_recoveries: int | None = None,
    ) -> Claim:
        """Reclaim expired leases, then start up to ``limit`` due tasks for ``owner``.

        At most ``max_concurrent`` tasks of the pool run at once, across every
        process: the claim takes ``min(limit, max_concurrent - running)``
        queued tasks whose ``not_before`` has passed, highest priority first,
        then in submission order; each becomes ``running`` with one more
        attempt, owned by ``owner`` until ``lease`` seconds from now.

        Args:
            owner: Who claims: unique per process (e.g. host, pid and a random part).
            limit: The most tasks to start now (the claimer's free workers).
            lease: Seconds the claim holds unless renewed.
            max_concurrent: The pool's limit across processes.
            max_recoveries: Fail a task whose lease expires once more than this
                many times; None puts it back in the queue every time.

        Raises:
            TypeError, ValueError: An argument has the wrong type or value.
            DatabaseError: The database failed; nothing was claimed.
        """
        request = ClaimRequest(
            limit=limit, lease=lease, max_concurrent=max_concurrent, max_recoveries=max_recoveries
        )
        params = self._claim_params(_check_text(owner, "owner"), request)
        with self._connection("claiming") as conn, conn.pipeline(), conn.transaction():
            return self._claim(conn, params)

    def _claim_params(self, owner: str, request: ClaimRequest) -> dict[str, Any]:
        lease = _check_seconds(request.lease, "lease")
        if lease == 0:
            raise ValueError("lease must be more than 0 seconds")
        max_recoveries = request.max_recoveries
        return {
            "pool": self.name,
            "channel": self.channel,
            "owner": owner,
            "limit": _check_int(request.limit, "limit", 1),
            "lease": lease,
            "max_concurrent": _check_int(request.max_concurrent, "max_concurrent", 1),
            "max_recoveries": (
                None if max_recoveries is None else _check_int(max_recoveries, "max_recoveries", 0)
            ),
        }

    @staticmethod
    def _claim(conn: _Conn, params: dict[str, Any]) -> Claim:
        """Claim in the caller's transaction, in pipeline mode.

        One round trip, yet four statements: the claim's snapshot is taken
        once the lock is held and the reclaim is done.
        """
        conn.execute(_LOCK, (_schema.LOCK_CLASS, params["pool"]))
        expired = conn.execute(_RECLAIM, params)
        claimed = conn.execute(_CLAIM, params)
        running = conn.execute(_RUNNING, params)
        full = running.fetchone()
        return Claim(
            started=[_record(row) for row in claimed.fetchall()],
            recovered=[_record(row) for row in expired.fetchall()],
            at_limit=full is not None and bool(full[0]),
        )

    def renew(self, owner: str, *, lease: float) -> Renewal:
        """Extend the lease of every task ``owner`` runs to ``lease`` seconds from now.

        Raises:
            TypeError, ValueError: An argument has the wrong type or value.
            DatabaseError: The database failed; no lease was extended.
        """
        params = {
            "pool": self.name,
            "owner": _check_text(owner, "owner"),
            "lease": _check_seconds(lease, "lease"),
        }
        with self._connection("renewing leases") as conn:
            rows = conn.execute(_RENEW, params).fetchall()
        return Renewal(
            owned=frozenset(f"t{seq}" for seq, _ in rows),
            cancel_requested=frozenset(f"t{seq}" for seq, asked in rows if asked),
        )

    def finish(self, record: TaskRecord, *, owner: str) -> TaskRecord | None:
        """Record the outcome of ``owner``'s attempt, and notify listeners.

        ``record`` is the task as claimed (its ``seq`` and ``attempts`` name
        the attempt) with its final ``status`` and its ``result``, or its
        ``error_type`` and ``error_message``, or its ``reason``.

        Returns:
            The stored record, or None if the attempt is no longer ``owner``'s
            (its lease expired and the task was reclaimed, or it was
            finished): the outcome was discarded.

        Raises:
            ValueError: ``record``'s status is not final.
            DatabaseError: The database failed; nothing was stored.
        """
        if record.status not in _FINAL_STATUSES:
            raise ValueError(f"finish() takes a final status, not {record.status.value!r}")
        return self.write(outcomes=[(record, 0.0)], owner=owner).outcomes[0]

    def requeue_for_retry(
        self, record: TaskRecord, *, owner: str, delay: float
    ) -> TaskRecord | None:
        """Queue ``owner``'s failed attempt again, due ``delay`` seconds from now.

        ``record`` names the attempt (``seq`` and ``attempts``) and carries the
        failed attempt's ``error_type`` and ``error_message``. If cancelling
        the task was asked while the attempt ran, it is cancelled instead.

        Returns:
            The stored record (``queued``, or ``cancelled``), or None if the
            attempt is no longer ``owner``'s: nothing was changed.

        Raises:
            TypeError, ValueError: An argument has the wrong type or value.
            DatabaseError: The database failed; nothing was stored.
        """
        _check_text(owner, "owner")
        delay = _check_seconds(delay, "delay")
        queued = msgspec.structs.replace(record, status=Status.QUEUED)
        return self.write(outcomes=[(queued, delay)], owner=owner).outcomes[0]

    def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a queued task at once, or ask the owner of a running one to stop.

        A running task stays ``running`` with ``cancel_requested`` set: its
        owner learns it from :meth:`renew` (or the ``cancel t<seq>``
        notification) and finishes it as ``cancelled``; if its lease expires
        first, the next claim cancels it. A finished task is left as it is.

        Returns:
            The stored record after the call.

        Raises:
            UnknownTaskError: The pool has no task ``task_id``.
            DatabaseError: The database failed; nothing was changed.
        """
        seq = task_seq(_check_text(task_id, "task_id"))
        if seq is None:
            raise UnknownTaskError(task_id)
        params = {"pool": self.name, "seq": seq, "channel": self.channel}
        with self._connection(f"cancelling task {task_id}") as conn:
            row = conn.execute(_CANCEL, params).fetchone()
            if row is None:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM harnpool_task WHERE pool = %s AND seq = %s",
                    (self.name, seq),
                ).fetchone()
        if row is None:
            raise UnknownTaskError(task_id)
        return _record(row)

    # -- reading ------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord:
        """The stored record of one task.

        Raises:
            UnknownTaskError: The pool has no task ``task_id``.
            DatabaseError: The database failed.
        """
        found = self.get_many([task_id])
        if task_id not in found:
            raise UnknownTaskError(task_id)
        return found[task_id]

    def get_many(self, task_ids: Iterable[str]) -> dict[str, TaskRecord]:
        """The stored records of the tasks among ``task_ids`` the pool has, by id."""
        seqs = [s for s in map(task_seq, task_ids) if s is not None]
        if not seqs:
            return {}
        with self._connection("reading tasks") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM harnpool_task WHERE pool = %s AND seq = any(%s)",
                (self.name, seqs),
            ).fetchall()
        return {r.id: r for r in map(_record, rows)}

    def by_key(self, key: str) -> TaskRecord | None:
        """The task holding ``key``, finished or not, or None."""
        with self._connection("reading a task by key") as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM harnpool_task WHERE pool = %s AND key = %s",
                (self.name, _check_text(key, "key")),
            ).fetchone()
        return None if row is None else _record(row)

    def registered(self) -> bool:
        """Whether a pool of this name was ever opened (:meth:`migrate` registers it)."""
        with self._connection("reading the pool's name") as conn:
            row = conn.execute("SELECT 1 FROM harnpool_pool WHERE name = %s", (self.name,))
            return row.fetchone() is not None

    def tasks(self) -> list[TaskRecord]:
        """Every task of the pool, in submission order."""
        with self._connection("reading tasks") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM harnpool_task WHERE pool = %s ORDER BY seq", (self.name,)
            ).fetchall()
        return [_record(r) for r in rows]

    def statistics(self) -> dict[Status, int]:
        """How many of the pool's tasks are in each status (every status, zeros included)."""
        with self._connection("counting tasks") as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM harnpool_task WHERE pool = %s GROUP BY status",
                (self.name,),
            ).fetchall()
        counts = dict.fromkeys(Status, 0)
        counts.update((Status(status), n) for status, n in rows)
        return counts

    def prune(self, *, keep: int | None, keep_for: float | None) -> int:
        """Delete finished tasks: all but the ``keep`` newest, and those finished over
        ``keep_for`` seconds ago (None: no such limit). Their keys no longer deduplicate.

        Returns:
            How many tasks were deleted.

        Raises:
            TypeError, ValueError: An argument has the wrong type or value.
            DatabaseError: The database failed; nothing was deleted.
        """
        if keep is not None:
            _check_int(keep, "keep", 0)
        if keep_for is not None:
            keep_for = _check_seconds(keep_for, "keep_for")
        if keep is None and keep_for is None:
            return 0
        with self._connection("dropping finished tasks") as conn:
            cur = conn.execute(
                _PRUNE,
                {"pool": self.name, "keep": keep, "keep_for": keep_for},
            )
            return cur.rowcount

    def lease(self, task_id: str) -> Lease:
        """The sharing state of one task: owner, lease, recoveries, cancel asked.

        Raises:
            UnknownTaskError: The pool has no task ``task_id``.
        """
        seq = task_seq(_check_text(task_id, "task_id"))
        row = None
        if seq is not None:
            with self._connection(f"reading the lease of task {task_id}") as conn:
                row = conn.execute(
                    "SELECT owner, date_part('epoch', lease_until), recoveries, cancel_requested"
                    " FROM harnpool_task WHERE pool = %s AND seq = %s",
                    (self.name, seq),
                ).fetchone()
        if row is None:
            raise UnknownTaskError(task_id)
        owner, lease_until, recoveries, asked = row
        return Lease(
            owner=owner, lease_until=lease_until, recoveries=recoveries, cancel_requested=asked
        )

    def newest_key(self, prefix: str) -> str | None:
        """The pool's greatest key (in code point order) that starts with ``prefix``, or None."""
        with self._connection("reading keys") as conn:
            row = conn.execute(
                "SELECT key FROM harnpool_task WHERE pool = %s AND starts_with(key, %s)"
                ' ORDER BY key COLLATE "C" DESC LIMIT 1',
                (self.name, prefix),
            ).fetchone()
        return None if row is None else str(row[0])

    def seconds_until_due(self) -> float | None:
        """Seconds until the next queued task waiting for its ``not_before`` is due, or None.

        Measured on the database's clock; 0 or less means one is due now.
        """
        with self._connection("reading the next due time") as conn:
            row = conn.execute(
                "SELECT date_part('epoch', min(not_before) - statement_timestamp())"
                " FROM harnpool_task WHERE pool = %s AND status = 'queued'"
                " AND not_before IS NOT NULL",
                (self.name,),
            ).fetchone()
        return None if row is None else row[0]

    # -- notifications ------------------------------------------------------------------

    def listen(self, *, ignore_own: bool = False) -> Listener:
        """Open a listener on the pool's channel (its own connection).

        Args:
            ignore_own: Drop the notifications this store's own connections
                sent: a process that made a change knows of it already.
        """
        from ._listener import Listener

        return Listener(self, ignore_own=ignore_own)

    def backend_pids(self) -> frozenset[int]:
        """The server processes of the store's open connections (what notifications name)."""
        return self._connections.pids()

    def notify(self, channel: str, payload: str) -> None:
        """Send ``payload`` on ``channel`` (committed at once)."""
        with self._connection("notifying") as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
