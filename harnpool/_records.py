"""The records a journal holds: one tagged union of msgspec Structs.

A journal is JSONL. Its first line is a :class:`Header`; every other line is a
:class:`TaskRecord`, a full snapshot of one task after a transition, so the
last record for a task id is that task's state. Fields are never renamed or
retyped; a new field gets a default, and a change the reader cannot ignore
bumps :data:`FORMAT_VERSION`.
"""

from __future__ import annotations

import enum

import msgspec

__all__ = ["FORMAT_VERSION", "FINISHED", "Header", "Record", "Status", "TaskRecord"]

FORMAT_VERSION = 1


class Status(enum.StrEnum):
    """Where a task is in its life.

    ``queued`` and ``running`` are unfinished; the others are final.
    """

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


FINISHED = frozenset({Status.COMPLETED, Status.FAILED, Status.REJECTED, Status.CANCELLED})


# gc=False: records hold only strings, numbers and tuples of strings, never a
# cycle, so the collector need not track the millions a large journal decodes to.
class Header(msgspec.Struct, tag="header", tag_field="kind", kw_only=True, frozen=True, gc=False):
    """The first line of every journal: its format and the pool's metadata."""

    format: int
    pool_id: str
    created_at: float
    max_concurrent: int
    #: The highest ``seq`` handed out when the journal was last compacted.
    submit_counter: int
    #: The ready queue's order: ``priority``, ``fifo``, ``lifo`` or ``fair``.
    strategy: str = "priority"


class TaskRecord(
    msgspec.Struct,
    tag="task",
    tag_field="kind",
    kw_only=True,
    frozen=True,
    omit_defaults=True,
    gc=False,
):
    """A snapshot of one task, appended at every transition."""

    id: str
    #: Submission order within the pool; the FIFO tie-break among equal priorities.
    seq: int
    status: Status
    submitted_at: float
    priority: int = 0
    key: str | None = None
    #: The qualified name of the task's function, for people reading the journal.
    function: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    #: How many times the task has been started, counting runs a crash interrupted.
    attempts: int = 0
    #: How many of those runs were interrupted (found ``running`` when the journal
    #: was opened): ``attempts - recoveries`` attempts ended in a result or an error.
    recoveries: int = 0
    #: The JSON the task returned; set only when ``status`` is ``completed``.
    result: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    #: For a final failure, the last attempt's error; while a retry is pending,
    #: the error of the attempt that failed.
    error_type: str | None = None
    error_message: str | None = None
    #: The name the function was registered under with ``harnpool.task``: a
    #: reopened pool runs the task again on its own, with ``args``.
    name: str | None = None
    #: The JSON-encoded positional arguments of a registered task's function;
    #: ``{"args": [...], "kwargs": {...}}`` when a functools.partial binds
    #: keywords (a form older versions refuse rather than drop the keywords).
    args: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    #: The label round-robined by the ``fair`` strategy.
    group: str | None = None
    #: How many failed attempts may be retried.
    retries: int = 0
    #: Qualified names of the exception types that are retried; None for any.
    retry_on: tuple[str, ...] | None = None
    #: Seconds an attempt may take before it is cancelled and counts as failed.
    timeout: float | None = None
    #: A queued task does not start before this time (a retry's backoff).
    not_before: float | None = None
    #: Why a task was rejected or cancelled.
    reason: str | None = None


Record = Header | TaskRecord
