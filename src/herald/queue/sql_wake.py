"""How a blocked SQL claimer learns that a job was pushed.

Both wakers count pushes in a generation number. A claimer reads the generation *before* it looks for
a job and then waits for it to change, so a push that lands between the look and the wait still wakes it.

- PostgreSQL: every push runs ``pg_notify``; one background thread per queue LISTENs and bumps the
  generation. No polling: a claimer sleeps until a push, the next due retry or lease expiry, or its timeout.
  Behind a pooler in transaction mode (PgBouncer) LISTEN is accepted but nothing is ever delivered, since
  the listening server session goes back to the pool: so, once LISTENing, the waker sends itself a NOTIFY
  and waits for it (:data:`PROBE_SECONDS`); if it never comes, claimers poll every
  :data:`PG_POLL_SECONDS` instead, and the log says so once. Point ``database_url`` at the primary (or
  PgBouncer in front of it): claims and LISTEN need it, a read replica can do neither.
- SQLite has no notifications. Pushes from this process wake claimers at once; pushes from other
  processes are seen by polling every :data:`SQLITE_POLL_SECONDS`. This is the one place herald polls.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy import func as sqlfunc

from herald.queue.errors import QueueUnavailable
from herald.queue.sql_engine import translate_errors

__all__ = [
    "CHANNEL",
    "NOTIFY",
    "PG_POLL_SECONDS",
    "PROBE_SECONDS",
    "SQLITE_POLL_SECONDS",
    "PgWaker",
    "PollWaker",
    "Waker",
]

log = logging.getLogger("herald.queue")

#: The LISTEN/NOTIFY channel of the queue table.
CHANNEL = "herald_queue"
#: How often a blocked SQLite claimer looks for jobs pushed by other processes.
SQLITE_POLL_SECONDS = 0.05
#: While the PostgreSQL listener is reconnecting, claimers look this often so they miss nothing.
_DEGRADED_POLL_SECONDS = 1.0
_LISTEN_SLICE_SECONDS = 1.0
#: How long the waker waits for its own NOTIFY before it decides LISTEN does not work here.
PROBE_SECONDS = 2.0
#: How often claimers look for jobs when LISTEN does not work (behind PgBouncer in transaction mode).
PG_POLL_SECONDS = 0.1
_warned_no_listen = False


#: The statement that wakes PostgreSQL claimers: run in the pushing transaction, delivered on its commit.
NOTIFY = select(sqlfunc.pg_notify(CHANNEL, ""))


class Waker:
    """A generation counter that blocked claimers wait on; see the module docstring."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._closed = False

    def start(self) -> None:
        """Begin watching for pushes from elsewhere; call before the first look of a blocking claim."""

    def snapshot(self) -> int:
        with self._cond:
            return self._generation

    def bump(self) -> None:
        """Something was pushed: wake every waiting claimer."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Return when the generation moves past ``seen``, or after ``timeout`` seconds at most."""
        with self._cond:
            self._cond.wait_for(lambda: self._generation != seen or self._closed, timeout=self._cap(timeout))

    def _cap(self, timeout: float) -> float:
        return timeout

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class PollWaker(Waker):
    """SQLite: in-process pushes wake at once, others are found by polling (see module docstring)."""

    def _cap(self, timeout: float) -> float:
        return min(timeout, SQLITE_POLL_SECONDS)


class PgWaker(Waker):
    """PostgreSQL: one LISTEN connection and thread per queue, started by the first blocking claim."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self._engine = engine
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._conn: Any = None  # the psycopg connection the thread listens on
        self._listening = threading.Event()
        #: LISTEN does not work here (see the module docstring): claimers poll.
        self.polling = False

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed or self.polling:
                return
            # LISTEN before returning, so that every push after this call is seen.
            self._conn = self._listen()
            try:
                works = self._probe()
            except Exception:  # the NOTIFY could not be sent: the database is unreachable
                self._conn.close()
                self._conn = None
                raise
            if not works:
                self._conn.close()
                self._conn = None
                self.polling = True
                _say_no_listen()
                return
            self._listening.set()
            self._thread = threading.Thread(target=self._run, name="herald-queue-listen", daemon=True)
            self._thread.start()

    def _listen(self) -> Any:
        import psycopg

        conn = None
        try:
            with translate_errors():
                raw = self._engine.raw_connection()  # raises the driver's own errors, unwrapped
            conn = raw.driver_connection
            # Detached: it stays in LISTEN for the queue's life and must not go back to the pool.
            raw.detach()
            conn.rollback()
            conn.autocommit = True
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as err:
            if conn is not None:
                conn.close()
            first_line = (str(err).strip().splitlines() or [""])[0]
            raise QueueUnavailable(f"database unavailable: {err.__class__.__name__}: {first_line}") from err
        return conn

    def _probe(self) -> bool:
        """NOTIFY ourselves and wait for it: False if it never arrives (a pooler swallowed the LISTEN)."""
        payload = f"probe-{uuid.uuid4().hex}"
        with translate_errors(), self._engine.begin() as conn:
            conn.execute(select(sqlfunc.pg_notify(CHANNEL, payload)))
        import psycopg

        deadline = time.monotonic() + PROBE_SECONDS
        try:
            while (left := deadline - time.monotonic()) > 0:
                for notice in self._conn.notifies(timeout=left):
                    if notice.payload == payload:
                        return True
                    self.bump()  # a real push that came meanwhile
        except psycopg.Error:
            # The connection broke while we waited: not a verdict on LISTEN. The listener thread finds
            # the broken connection at once and reconnects, as after any loss.
            return True
        return False

    def _run(self) -> None:
        import psycopg

        while not self._closed:
            try:
                for _ in self._conn.notifies(timeout=_LISTEN_SLICE_SECONDS):
                    self.bump()
                    if self._closed:
                        break
            except psycopg.Error as err:
                if self._closed:
                    break
                log.warning("queue listener lost its PostgreSQL connection (%s); reconnecting", err)
                self._listening.clear()
                self._reconnect()
        self._conn.close()

    def _reconnect(self) -> None:
        while not self._closed:
            try:
                self._conn.close()
                self._conn = self._listen()
            except Exception as err:  # keep trying whatever the failure; claimers poll meanwhile
                log.debug("queue listener reconnect failed: %s", err)
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, timeout=_DEGRADED_POLL_SECONDS)
                continue
            self._listening.set()
            self.bump()  # pushes made while we were deaf: make every claimer look again
            return

    def _cap(self, timeout: float) -> float:
        if self.polling:
            return min(timeout, PG_POLL_SECONDS)
        return timeout if self._listening.is_set() else min(timeout, _DEGRADED_POLL_SECONDS)

    def close(self) -> None:
        super().close()
        thread = self._thread
        if thread is None:
            return
        # The thread sits in notifies() for up to a second; a NOTIFY wakes it now. Other listeners on the
        # channel wake too and merely look once more.
        try:
            with self._engine.begin() as conn:
                conn.execute(NOTIFY)
        except Exception:  # the database may be down: the thread then stops within a slice
            pass
        thread.join(timeout=_LISTEN_SLICE_SECONDS + 1)


def _say_no_listen() -> None:
    global _warned_no_listen
    if _warned_no_listen:  # once per process, not once per queue object
        return
    _warned_no_listen = True
    log.warning(
        "PostgreSQL LISTEN/NOTIFY does not reach this process (a pooler such as PgBouncer in transaction "
        "mode between herald and the database?): the SQL queue looks for jobs every %.1fs instead",
        PG_POLL_SECONDS,
    )
