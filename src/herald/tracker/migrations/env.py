"""Alembic environment: runs herald's migrations on the connection herald hands it."""

from alembic import context
from sqlalchemy import create_engine

# herald.outbox adds the outbox and ledger tables to this metadata when it is imported (the schema test
# does); running migrations needs no metadata at all.
from herald.tracker.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _migrate(conn)
    engine.dispose()


def _migrate(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
