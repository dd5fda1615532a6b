"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import herald.outbox  # noqa: F401  (its tables join the tracker metadata)
from herald.tracker.models import Base
from herald.tracker.schema import current_revision, head_revision, upgrade


def test_migrations_match_models(any_db):
    with any_db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upgrade_is_idempotent_and_reaches_head(any_db):
    upgrade(any_db.engine)
    assert current_revision(any_db.engine) == head_revision(any_db.engine) == "0007_check"
