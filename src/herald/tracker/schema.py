"""Schema migrations (alembic), run by ``herald db upgrade`` and on start-up of ``herald up``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

__all__ = ["current_revision", "head_revision", "upgrade"]

MIGRATIONS = Path(__file__).with_name("migrations")


def _config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


#: The PostgreSQL advisory lock key that serializes migrations ("herald" in ASCII).
_MIGRATION_LOCK = 0x68657261_6C64


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision``; a no-op when it is there already."""
    cfg = _config(engine)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Several front ends and worker hosts may start at once on a new database: one migrates, the
            # others wait here and then find it done (SQLite serializes writers by itself).
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(_config(engine)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
