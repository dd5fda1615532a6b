"""Builders for tracker data used across test packages: a database per test, and a small world in it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from herald.tracker.db import Database
from herald.tracker.models import Project, Tracker, User
from herald.tracker.projects import create_project
from herald.tracker.schema import upgrade
from herald.tracker.trackers import create_tracker
from herald.tracker.users import create_user


def make_database(url: str) -> Database:
    db = Database(url)
    upgrade(db.engine)
    return db


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    db = make_database(f"sqlite:///{tmp_path / 'herald.db'}")
    yield db
    db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The same test on SQLite and on the machine's PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'herald.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    db = make_database(url)
    yield db
    db.dispose()


BUG_TRACKER_FIELDS = [
    {"name": "title", "type": "string", "required": True},
    {"name": "status", "type": "select", "options": ["Open", "In progress", "Fixed", "Closed"]},
    {"name": "assigned_to", "type": "user", "notify": True},
    {"name": "cc", "type": "users", "notify": True},
    {"name": "description", "type": "text"},
    {"name": "severity", "type": "int"},
    {"name": "estimate", "type": "float"},
    {"name": "due", "type": "date"},
    {"name": "internal_notes", "type": "text", "read_permission": "members"},
    {"name": "security_score", "type": "int", "read_permission": "admins"},
]


@dataclass
class World:
    """A public and a private project with a bug tracker each, and a few users with their tokens."""

    users: dict[str, User]
    tokens: dict[str, str]
    public: Project
    private: Project
    bugs: Tracker
    secret_bugs: Tracker


def build_world(db: Database, **tracker_overrides: object) -> World:
    with db.session() as s:
        users: dict[str, User] = {}
        tokens: dict[str, str] = {}
        for name, lang, tz in [
            ("alice", "en", "UTC"),
            ("bob", "fr", "Europe/Paris"),
            ("carol", "en", "America/New_York"),
            ("dave", "en", "UTC"),
            ("eve", "en", "UTC"),
        ]:
            user, token = create_user(
                s,
                username=name,
                email=f"{name}@example.org",
                real_name=name.capitalize(),
                language=lang,
                timezone=tz,
            )
            users[name], tokens[name] = user, token
        public = create_project(
            s, name="demo", label="Demo", public=True, members=["alice", "bob"], admins=["alice"]
        )
        private = create_project(s, name="secret", label="Secret", public=False, members=["alice", "carol"])
        spec = {
            "name": "bugs",
            "item_name": "bug",
            "fields": BUG_TRACKER_FIELDS,
            "semantics": {
                "title": "title",
                "status": "status",
                "open_values": ["Open", "In progress"],
                "assigned_to": "assigned_to",
            },
        }
        spec.update(tracker_overrides)
        bugs = create_tracker(s, {**spec, "project_id": public.id})
        secret_bugs = create_tracker(s, {**spec, "project_id": private.id})
    return World(users, tokens, public, private, bugs, secret_bugs)


@pytest.fixture
def world(sqlite_db: Database) -> World:
    return build_world(sqlite_db)
