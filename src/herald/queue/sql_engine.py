"""The SQLAlchemy engine of the SQL queue, and the translation of database errors into herald's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url

from herald.queue.errors import QueueError, QueueUnavailable

__all__ = ["READ_ONLY_OPTION", "SQLITE_BUSY_TIMEOUT_MS", "behind_pooler", "make_engine", "translate_errors"]

#: Execution option marking a transaction that only reads (SQLite then begins it without a lock).
READ_ONLY_OPTION = "herald_queue_read_only"
#: How long a SQLite writer waits for another's lock before "database is locked" (QueueUnavailable).
SQLITE_BUSY_TIMEOUT_MS = 5000


def make_engine(url: str) -> Engine:
    """An engine for ``url`` set up for a queue: SQLite in WAL mode with a busy timeout and
    ``BEGIN IMMEDIATE`` transactions; PostgreSQL through psycopg 3 with connections checked on checkout."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # the driver herald installs
        engine = create_engine(parsed, pool_pre_ping=True)
        event.listen(engine, "connect", _pg_connect)
        return engine
    if backend != "sqlite":
        raise QueueError(f"the SQL queue supports sqlite and postgresql, not {backend}")
    database = parsed.database or ""
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        # Every pooled connection would see its own empty database: workers could never share jobs.
        raise QueueError("the SQL queue needs a SQLite file, not an in-memory database")
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


#: Limits on each session of the queue, so that a host cut off mid-claim does not keep its rows locked
#: until the server notices the dead peer (hours): the same as the tracker's (``herald.tracker.db``).
SESSION_LIMITS = (
    "SET idle_in_transaction_session_timeout = 5000",
    "SET tcp_keepalives_idle = 10",
    "SET tcp_keepalives_interval = 5",
    "SET tcp_keepalives_count = 3",
    # Keepalives are not sent while data the server wrote stays unacknowledged (retransmission): a host
    # cut off while the server answers it would hold its locks until the kernel gives up (~15 min).
    "SET tcp_user_timeout = 25000",
)


def behind_pooler(dbapi_connection: Any) -> bool:
    """Whether a psycopg connection goes through a pooler (PgBouncer) rather than to the server itself: a
    pooler answers the client with a backend pid of its own, unlike the server's ``pg_backend_pid()``.
    Sets the session limits on the way; leaves the connection outside any transaction."""
    with dbapi_connection.cursor() as cur:
        for statement in SESSION_LIMITS:
            cur.execute(statement)
        cur.execute("SELECT pg_backend_pid()")
        row = cur.fetchone()
    dbapi_connection.commit()
    return row is not None and row[0] != dbapi_connection.info.backend_pid


def _pg_connect(dbapi_connection: Any, _record: Any) -> None:
    # In transaction mode, each transaction may meet another server session, where psycopg's server-side
    # prepared statements do not exist ("prepared statement _pg3_0 does not exist"): off behind a pooler.
    if behind_pooler(dbapi_connection):
        dbapi_connection.prepare_threshold = None


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Python 3.11's sqlite3 starts transactions lazily and only for DML ("legacy transaction control"),
    # so a SELECT ... then UPDATE would not be one transaction. Take control: no implicit BEGIN, and
    # _sqlite_begin issues BEGIN IMMEDIATE (SQLAlchemy's documented recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers (stats, the admin page) run while a worker writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # IMMEDIATE takes the write lock up front: two claimers cannot both read the same ready row and
    # then both update it, and a reader never has to upgrade its lock (which fails rather than waits).
    # Transactions marked READ_ONLY (stats, an idle claimer's look) take no lock, so they never hold up
    # the tracker's writes to the same file.
    read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
    connection.exec_driver_sql("BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE")


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise database errors as herald's: QueueUnavailable if transient, else QueueError.

    Messages carry the driver's text, never the URL (which may hold the password).
    """
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError, exc.DisconnectionError) as err:
        raise QueueUnavailable(f"database unavailable: {_describe(err)}") from err
    except exc.DBAPIError as err:
        if err.connection_invalidated:
            raise QueueUnavailable(f"database unavailable: {_describe(err)}") from err
        raise QueueError(f"database error: {_describe(err)}") from err
    except exc.SQLAlchemyError as err:
        raise QueueError(f"database error: {_describe(err)}") from err


def _describe(err: Exception) -> str:
    orig = getattr(err, "orig", None) or err
    return f"{orig.__class__.__name__}: {str(orig).strip().splitlines()[0] if str(orig).strip() else ''}"[
        :300
    ]
