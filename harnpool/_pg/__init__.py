"""The PostgreSQL storage: a pool shared by many processes and hosts.

Imported only when a pool is opened on a database, since it needs the
``postgres`` extra (psycopg).
"""

from ._listener import RECONNECTED, Listener
from ._schema import SCHEMA_VERSION
from ._store import (
    Claim,
    ClaimRequest,
    Lease,
    PostgresStore,
    Renewal,
    Written,
    channel_for,
    task_seq,
)

__all__ = [
    "RECONNECTED",
    "SCHEMA_VERSION",
    "Claim",
    "ClaimRequest",
    "Lease",
    "Listener",
    "PostgresStore",
    "Renewal",
    "Written",
    "channel_for",
    "task_seq",
]
