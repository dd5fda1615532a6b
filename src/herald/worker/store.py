"""How the delivery side talks to the tracker database: short write transactions, and reads that take no
write lock.

The tracker's engine starts every SQLite transaction with ``BEGIN IMMEDIATE`` (right for the web's
read-modify-write requests). Planning a notification is a few milliseconds of reads and rendering; holding
the single SQLite write lock through it would make two workers and the web queue up behind one another,
each waiter sleeping in SQLite's busy handler. So on SQLite reads go through a second engine whose
transactions start with a plain (deferred) ``BEGIN``: a consistent read snapshot, no write lock (WAL lets
readers and the writer proceed together). On PostgreSQL reads never block writers, so both are the same.

Writes go through Core connections rather than ORM sessions: the ledger and outbox statements are simple,
and they run several times per job.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from herald.tracker.db import Database

__all__ = ["Store"]


class Store:
    """Write transactions and read-only sessions on one tracker database. Share one per process."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._read_engine = None
        if db.engine.dialect.name == "sqlite":
            self._read_engine = create_engine(
                db.engine.url, connect_args={"check_same_thread": False, "timeout": 30}
            )
            event.listen(self._read_engine, "connect", _sqlite_connect)
            event.listen(self._read_engine, "begin", _sqlite_begin_deferred)
        self._reads = sessionmaker(self._read_engine or db.engine, expire_on_commit=False)

    def write(self) -> AbstractContextManager[Connection]:
        """A write transaction (committed on success, rolled back on error)."""
        return self.db.engine.begin()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session; whatever it would change is rolled back."""
        session = self._reads()
        try:
            yield session
        finally:
            session.rollback()
            session.close()

    def dispose(self) -> None:
        if self._read_engine is not None:
            self._read_engine.dispose()


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # the begin listener below issues BEGIN itself
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin_deferred(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")
