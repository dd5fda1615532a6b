"""Database commands: ``herald db upgrade``, ``herald load FILE``, ``herald user token NAME``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from herald.cli.main import RET_ERROR, Context, echo_json, fail, pass_ctx
from herald.tracker.db import Database
from herald.tracker.errors import TrackerError
from herald.tracker.loader import load_document, read_document
from herald.tracker.models import Changeset, User

if TYPE_CHECKING:
    from herald.notify.dispatch import DispatchPolicy
from herald.tracker.schema import current_revision, upgrade
from herald.tracker.users import hash_token


def open_database(settings) -> Database:  # type: ignore[no-untyped-def]
    """The tracker database at the newest schema."""
    db = Database(settings.database_url)
    upgrade(db.engine)
    return db


@click.group()
def db() -> None:
    """The tracker database."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Create or migrate the schema to the newest version."""
    database = open_database(ctx.settings)
    click.echo(f"database at revision {current_revision(database.engine)}")
    database.dispose()


@click.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_ctx
def load(ctx: Context, file: Path) -> None:
    """Create the users, projects, trackers and artifacts of a JSON or YAML FILE (all or nothing).

    Prints what was created and each new user's API token, which is shown only once.
    """
    from herald.notify.dispatch import DispatchPolicy

    database = open_database(ctx.settings)
    try:
        doc = read_document(file)
        with database.session() as session:
            result = load_document(session, doc, on_changeset=record_owed(DispatchPolicy(ctx.settings)))
    except TrackerError as exc:
        fail(f"{file}: {exc.message} (nothing was loaded)", RET_ERROR)
    finally:
        database.dispose()
    echo_json(result)


@click.group()
def user() -> None:
    """Users."""


@user.command("token")
@click.argument("username")
@pass_ctx
def user_token(ctx: Context, username: str) -> None:
    """Issue USERNAME a new API token (the old one stops working) and print it."""
    import secrets

    database = open_database(ctx.settings)
    try:
        with database.session() as session:
            found = session.scalar(select(User).where(User.username == username))
            if found is None:
                fail(f"no user named {username!r}", RET_ERROR)
            token = secrets.token_urlsafe(32)
            found.token_hash = hash_token(token)
    finally:
        database.dispose()
    click.echo(token)


COMMANDS = [db, load, user]


def record_owed(policy: DispatchPolicy) -> Callable[[Session, Changeset], None]:
    """Record the notification each loaded change owes, in the load's transaction."""
    from herald.outbox import records

    def record(session: Session, changeset: Changeset) -> None:
        records.record(
            session,
            changeset.id,
            policy.mode_for(changeset.artifact.tracker.project_id),
            changeset.created_at,
        )

    return record
