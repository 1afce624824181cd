"""Notifications of a pool's changes, on a connection of their own.

The store notifies the pool's channel in the same transaction as the change,
so a notification arrives only once the change is committed: ``queued`` when
tasks were submitted or put back in the queue, ``finished t<seq> t<seq> ...``
when tasks finished (one notification names every task a group finished, split
when it would pass PostgreSQL's 8000-byte limit), ``cancel t<seq>`` when
cancelling a running task was asked. Several notifications of one transaction
with the same payload arrive as one.

Notifications are hints, never the only signal: one sent while the listener
was disconnected is lost. So after a lost connection the listener connects
again and reports :data:`RECONNECTED`, and the caller looks at the database at
once; callers also poll on a timer, in case a change came from somewhere that
does not notify.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from typing import TYPE_CHECKING, Final

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from .._errors import DatabaseError, PoolClosedError

if TYPE_CHECKING:
    from ._store import PostgresStore

__all__ = ["RECONNECTED", "Listener"]

#: Reported by :meth:`Listener.wait` when the connection was made again:
#: whatever was notified meanwhile was missed.
RECONNECTED: Final = "reconnected"

# A dead peer on TCP is noticed within about a minute (libpq ignores these on
# unix sockets, where the kernel reports a dead server at once).
_KEEPALIVE: Final = "keepalives=1 keepalives_idle=30 keepalives_interval=10 keepalives_count=3"


class Listener:
    """Waits for the pool's notifications in a thread; see the module's docstring.

    One thread waits at a time. :meth:`wake` ends a wait early from any thread;
    :meth:`close` wakes a waiter and closes the connection once it has returned.
    With ``ignore_own``, notifications sent by the store's own connections are
    dropped (a wait they ended returns no payload).
    """

    def __init__(self, store: PostgresStore, *, ignore_own: bool = False) -> None:
        self._store = store
        self._ignore_own = ignore_own
        # A channel of its own, so that wake() reaches only this listener.
        self._wake_channel = f"{store.channel}_w{secrets.token_hex(8)}"
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._lock = threading.Lock()
        self._closed = False
        with self._lock:
            self._connect()

    def _connect(self) -> None:
        try:
            # The DSN's own settings come last and win.
            dsn = make_conninfo(_KEEPALIVE, **conninfo_to_dict(self._store.dsn))
            conn = psycopg.connect(dsn, autocommit=True, fallback_application_name="harnpool")
        except psycopg.Error as exc:
            raise DatabaseError(
                f"pool {self._store.name!r}: listening failed: cannot connect: {exc}",
                pool=self._store.name,
            ) from exc
        try:
            for channel in (self._store.channel, self._wake_channel):
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except psycopg.Error as exc:
            conn.close()
            raise DatabaseError(
                f"pool {self._store.name!r}: listening failed: {exc}", pool=self._store.name
            ) from exc
        self._conn = conn

    @property
    def backend_pid(self) -> int | None:
        """The server process of the listening connection, or None while it is lost."""
        conn = self._conn
        return None if conn is None else conn.info.backend_pid

    def wait(self, timeout: float) -> list[str]:
        """Block until notifications arrive, ``timeout`` seconds pass, or :meth:`wake`.

        Returns:
            The payloads received, in order; ``[RECONNECTED]`` if the connection
            had been lost and was made again (look at the database now); an
            empty list when the time ran out or the wait was woken.

        Raises:
            PoolClosedError: The listener was closed.
            DatabaseError: The connection was lost and cannot be made again;
                the next call tries again.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                raise PoolClosedError("the listener is closed")
            if self._conn is None:
                self._connect()
                return [RECONNECTED]
            payloads: list[str] = []
            try:
                # Notifications that came while nobody waited are kept by the
                # connection and come out first.
                while True:
                    timeout = max(0.0, deadline - time.monotonic())
                    notifies = list(self._conn.notifies(timeout=timeout, stop_after=1))
                    # Take what else arrived in the same packets, without waiting.
                    notifies += self._conn.notifies(timeout=0)
                    own = self._store.backend_pids() if self._ignore_own else frozenset()
                    payloads += (
                        n.payload
                        for n in notifies
                        if n.channel == self._store.channel and n.pid not in own
                    )
                    # Only own notifications: wait on, so that a wait ends on
                    # news, a wake-up or its timeout.
                    woken = any(n.channel == self._wake_channel for n in notifies)
                    if payloads or woken or not notifies or time.monotonic() >= deadline:
                        break
            except psycopg.OperationalError:
                self._conn.close()
                self._conn = None
                self._connect()
                return [RECONNECTED]
            return payloads

    def wake(self) -> None:
        """End the current (or next) :meth:`wait` early; it returns no payload.

        Raises:
            DatabaseError: The database cannot be reached.
        """
        self._store.notify(self._wake_channel, "")

    def close(self) -> None:
        """Wake a waiter, then close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        # If the database cannot be reached, the waiter returns at its timeout instead.
        with contextlib.suppress(DatabaseError, PoolClosedError):
            self.wake()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
