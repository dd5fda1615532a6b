"""How the delivery side talks to the tracker database: short write transactions, and reads that take no
write lock.

Planning a notification is a few milliseconds of reads and rendering; holding SQLite's single write lock
through it would make two workers and the web queue up behind one another. So reads go through
``Database.read()``, whose SQLite transactions take no write lock.

Writes go through Core connections rather than ORM sessions: the ledger and outbox statements are simple,
and they run several times per job.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from herald.tracker.db import Database

__all__ = ["Store"]


class Store:
    """Write transactions and read-only sessions on one tracker database. Share one per process."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def write(self) -> AbstractContextManager[Connection]:
        """A write transaction (committed on success, rolled back on error)."""
        return self.db.engine.begin()

    def read(self) -> AbstractContextManager[Session]:
        """A read-only session that takes no write lock (see ``Database.read``)."""
        return self.db.read()

    def dispose(self) -> None:
        """The engines belong to the Database; nothing of the store's own to release."""
