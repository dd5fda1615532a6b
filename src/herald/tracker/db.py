"""The database seam: engine and session construction for SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "WriterLock", "make_engine"]


def make_engine(url: str, *, echo: bool = False, reader: bool = False) -> Engine:
    """An engine tuned for herald: SQLite gets WAL, foreign keys and serialized writers.

    ``reader`` (SQLite only) makes an engine whose transactions take no write lock, for read-only work.
    """
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30})
        _tune_sqlite(engine, begin="BEGIN" if reader else "BEGIN IMMEDIATE")
        return engine
    engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)
    event.listen(engine, "connect", _on_pg_connect)
    return engine


#: Limits on each of herald's PostgreSQL sessions, for a host that vanishes (a network cut) holding row
#: locks, a notification's say, in an open transaction: the server ends the session — and rolls back —
#: once its peer stopped answering TCP keepalives (about 10 + 3 * 5 s), or left 25 s of the server's answer
#: unacknowledged (tcp_user_timeout: keepalives wait while data is in flight), or the transaction idled 5 s
#: (herald never idles inside one), instead of keeping the locks from its successor until the operating
#: system gives up on the peer, 15 min to hours later. The idle timer alone is not enough: PostgreSQL arms
#: it only when it sends ReadyForQuery, and the Flush message psycopg's pipeline (an executemany) sends
#: after its Sync disarms it until the next statement — which a cut host never sends.
#: The SQL queue's engine sets the same (``herald.queue.sql_engine``): the queue may not import the
#: tracker, so each part states them.
SESSION_LIMITS = (
    "SET idle_in_transaction_session_timeout = 5000",
    "SET tcp_keepalives_idle = 10",
    "SET tcp_keepalives_interval = 5",
    "SET tcp_keepalives_count = 3",
    # Keepalives are not sent while data the server wrote stays unacknowledged (retransmission): a host
    # cut off while the server answers it would hold its locks until the kernel gives up (~15 min).
    "SET tcp_user_timeout = 25000",
)


def _on_pg_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
    """Per new connection: the session limits above; and, through a pooler in transaction
    mode (PgBouncer), where each transaction may meet another server session, no server-side prepared
    statements (psycopg's would not exist there). A pooler answers the client with a backend pid of its
    own, unlike the server's ``pg_backend_pid()``."""
    backend_pid = getattr(getattr(dbapi_conn, "info", None), "backend_pid", None)
    if backend_pid is None:
        return
    with dbapi_conn.cursor() as cur:
        for statement in SESSION_LIMITS:
            cur.execute(statement)
        cur.execute("SELECT pg_backend_pid()")
        row = cur.fetchone()
    dbapi_conn.commit()
    if row is not None and row[0] != backend_pid:
        dbapi_conn.prepare_threshold = None


def _tune_sqlite(engine: Engine, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # pysqlite's own transaction handling defers BEGIN and cannot do BEGIN IMMEDIATE; take it over.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # IMMEDIATE takes the write lock up front, so two read-modify-write transactions on one artifact
        # serialize instead of one failing late with "database is locked" (or losing an update). Readers
        # use a plain BEGIN: a consistent WAL snapshot that neither waits for nor blocks the writer.
        conn.exec_driver_sql(begin)


#: How long a writer waits for the write lock, as SQLite's busy_timeout does.
WRITE_LOCK_TIMEOUT_SECONDS = 30.0


class WriterLock:
    """One SQLite writer at a time across the threads and processes of a host.

    SQLite has one writer at a time, and a connection that finds the lock taken sleeps in SQLite's busy
    handler (1 ms, then 2, 5, 10 ... up to 100 ms a try): with a web front end and two busy workers on one
    file, writers spent more time asleep there than writing. Writers queue here instead, on a thread lock
    and an ``flock`` of ``<database>-writer.lock`` polled every 0.1 to 2 ms, so the lock changes hands
    within milliseconds. Re-entrant within a thread; reopened after a fork.
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> WriterLock:
        self._thread_lock.acquire()
        try:
            if self._depth == 0 and self._path is not None:
                self._lock_file(self._descriptor())
        except BaseException:
            self._thread_lock.release()
            raise
        self._depth += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    @staticmethod
    def _lock_file(fd: int) -> None:
        """Take the file lock, waiting at most :data:`WRITE_LOCK_TIMEOUT_SECONDS` (SQLite's own
        busy_timeout): a holder that is frozen or hung must end in an error, not a silent stall. The
        waits are short (up to 2 ms), so the lock still changes hands within milliseconds."""
        deadline = time.monotonic() + WRITE_LOCK_TIMEOUT_SECONDS
        pause = 0.0001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the database's write lock was held by another process for over "
                        f"{WRITE_LOCK_TIMEOUT_SECONDS:g}s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.002)

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            assert self._path is not None
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd


def _writer_lock(url: str) -> WriterLock | None:
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return WriterLock(None if not path or path == ":memory:" else f"{path}-writer.lock")


class Database:
    """Owns the engines and hands out sessions: ``session()`` commits on success and rolls back on error;
    ``read()`` is for reads only and never holds SQLite's single write lock."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, echo=echo)
        self._write_lock = _writer_lock(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine = make_engine(url, echo=echo, reader=True) if url.startswith("sqlite") else None
        self._read_factory = sessionmaker(self._read_engine or self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        if self._write_lock is not None:
            with self._write_lock:
                yield from self._session()
        else:
            yield from self._session()

    def _session(self) -> Iterator[Session]:
        session = self._factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A Core write transaction: committed on success, rolled back on error."""
        if self._write_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session: whatever it would change is rolled back."""
        session = self._read_factory()
        try:
            yield session
        finally:
            # close() rolls the transaction back without expiring what was loaded (rollback() would),
            # so objects read here stay usable, detached, by the caller.
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._read_engine is not None:
            self._read_engine.dispose()
