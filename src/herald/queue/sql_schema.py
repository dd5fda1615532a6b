"""The one table of the SQL queue, on its own MetaData so the queue can live beside any schema.

A row is a job in one of three states::

    ready (available_at in the future: a delayed retry) ──claim──> claimed (lease_until) ──ack──> deleted
      ▲                                                             │   │
      └──────────────── retry, lease expired, requeue_dead ─────────┘   └──dead / too many attempts──> dead

Times are unix seconds (floats) from the workers' clocks, like ``Job.enqueued_at``. ``attempts`` counts the
claims since the job was last settled (a retry resets it); ``fence`` counts every claim ever and is never
reset, so a claim's receipt ``"<id>:<fence>"`` names that one claim even after the attempt count restarts.
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    BigInteger,
    CheckConstraint,
    Column,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    exc,
    inspect,
)

from herald.queue.sql_engine import translate_errors

__all__ = ["CLAIMED", "DEAD", "READY", "create_schema", "metadata", "queue_table"]

READY, CLAIMED, DEAD = "ready", "claimed", "dead"

metadata = MetaData()

queue_table = Table(
    "herald_queue",
    metadata,
    # INTEGER PRIMARY KEY on SQLite so the id is the rowid (autoincrementing); BIGINT elsewhere.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False),
    # Null only for rows too broken to tell (written by something other than herald).
    Column("changeset_id", BigInteger, nullable=True),
    Column("payload", Text, nullable=False),
    Column("state", String(8), nullable=False),
    Column("available_at", Double, nullable=False),
    Column("lease_until", Double, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("fence", BigInteger, nullable=False, server_default="0"),
    Column("worker", String(200), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("enqueued_at", Double, nullable=False),
    Column("died_at", Double, nullable=True),
    UniqueConstraint("job_id", name="herald_queue_job_id_key"),
    CheckConstraint(f"state IN ('{READY}', '{CLAIMED}', '{DEAD}')", name="herald_queue_state_check"),
    # The claim's two lookups: the next ready row in line, and any expired lease.
    Index("herald_queue_ready_idx", "state", "available_at", "id"),
    Index("herald_queue_lease_idx", "state", "lease_until"),
)


def create_schema(engine: Engine) -> None:
    """Create the queue table and its indexes if they are missing; safe to call from many processes."""
    with translate_errors():
        try:
            metadata.create_all(engine, checkfirst=True)
        except (exc.ProgrammingError, exc.IntegrityError):
            # Two processes starting together both saw no table and both ran CREATE TABLE; PostgreSQL
            # rejects the second. What matters is that the table now exists.
            if not inspect(engine).has_table(queue_table.name):
                raise
        _add_fence(engine)


def _add_fence(engine: Engine) -> None:
    """Tables made by herald 0.1 have no ``fence`` column: add it (every row starts at 0)."""
    if any(c["name"] == "fence" for c in inspect(engine).get_columns(queue_table.name)):
        return
    try:
        with engine.begin() as conn:
            conn.execute(DDL(f"ALTER TABLE {queue_table.name} ADD COLUMN fence BIGINT NOT NULL DEFAULT 0"))
    except (exc.OperationalError, exc.ProgrammingError):
        # Another process added it between our look and our ALTER.
        if not any(c["name"] == "fence" for c in inspect(engine).get_columns(queue_table.name)):
            raise
