"""Fixture builders for the notifier's tests: a temp-file SQLite database and a :class:`Scene` that fills it
through the tracker services (and, for hostile data the services would refuse, through the models)."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from herald.config import Settings, load_settings
from herald.notify import NotificationPlan, Recipient, compute_recipients, plan_notification, prepare_change
from herald.tracker.artifacts import create_artifact, update_artifact
from herald.tracker.db import Database
from herald.tracker.models import Base, User, UserStatus
from herald.tracker.projects import create_project
from herald.tracker.subscriptions import follow, unsubscribe, unsubscribe_tracker
from herald.tracker.trackers import create_tracker
from herald.tracker.users import create_user

SECRET = "test-secret-key"
BASE_URL = "https://tracker.example.org"
DOMAIN = "tracker.example.org"

FIELDS: list[dict[str, Any]] = [
    {"name": "title", "type": "string", "required": True},
    {"name": "status", "type": "select", "options": ["Open", "In progress", "Fixed", "Closed"]},
    {"name": "assigned_to", "type": "user"},
    {"name": "cc", "type": "users", "notify": True},
    {"name": "reviewer", "type": "user"},  # a user field without notify: never a reason
    {"name": "description", "type": "text"},
    {"name": "severity", "type": "int"},
    {"name": "internal_notes", "type": "text", "read_permission": "members"},
    {"name": "security_score", "type": "int", "read_permission": "admins"},
]
SEMANTICS = {"title": "title", "status": "status", "assigned_to": "assigned_to"}


@dataclass
class Mail:
    """A message as a receiver sees it: the SMTP bytes parsed back."""

    raw: bytes
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        return self.message.get_body(("plain",)).get_content()

    @property
    def html(self) -> str | None:
        part = self.message.get_body(("html",))
        return None if part is None else part.get_content()

    @property
    def header_names(self) -> list[str]:
        return [k.lower() for k in self.message]

    def everything(self) -> str:
        """Subject, every header and both bodies, decoded: what must never hold a secret."""
        headers = "\n".join(f"{k}: {v}" for k, v in self.message.items())
        return "\n".join([headers, self.text, self.html or ""])


def as_received(message: EmailMessage) -> Mail:
    return as_sent(message.as_bytes(policy=email.policy.SMTP))


def as_sent(raw: bytes) -> Mail:
    return Mail(raw, email.message_from_bytes(raw, policy=email.policy.default))


class Scene:
    """Users, projects, trackers and changes, named by short strings; ids come back as ints."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.users: dict[str, int] = {}

    # --- setup ----------------------------------------------------------------------------------------

    def user(self, name: str, **attrs: Any) -> int:
        attrs.setdefault("real_name", name.capitalize())
        with self.db.session() as s:
            user, _token = create_user(s, username=name, email=f"{name}@example.org", **attrs)
            self.users[name] = user.id
        return self.users[name]

    def project(self, name: str, *, public: bool = True, members=(), admins=()) -> int:
        with self.db.session() as s:
            return create_project(
                s, name=name, label=name.capitalize(), public=public, members=members, admins=admins
            ).id

    def tracker(
        self,
        project_id: int,
        *,
        name: str = "bugs",
        fields: list[dict[str, Any]] | None = None,
        semantics: dict[str, Any] | None = None,
        mode: str = "all_updates",
        lists: list[dict[str, Any]] | None = None,
    ) -> int:
        spec = {
            "project_id": project_id,
            "name": name,
            "item_name": "bug",
            "fields": fields or FIELDS,
            "semantics": SEMANTICS if semantics is None else semantics,
            "notifications": {"mode": mode, "lists": lists or []},
        }
        with self.db.session() as s:
            return create_tracker(s, spec).id

    def _u(self, s: Session, name: str) -> User:
        return s.get(User, self.users[name])

    def create(
        self, author: str, tracker_id: int, comment: str | None = None, private: bool = False, **values: Any
    ) -> int:
        values.setdefault("title", "A bug")
        with self.db.session() as s:
            cs = create_artifact(
                s,
                tracker_id=tracker_id,
                author=self._u(s, author),
                values=values,
                comment=comment,
                comment_private=private,
            )
            return cs.id

    def update(
        self, author: str, artifact_id: int, comment: str | None = None, private: bool = False, **values: Any
    ) -> int:
        with self.db.session() as s:
            cs = update_artifact(
                s,
                artifact_id=artifact_id,
                author=self._u(s, author),
                values=values,
                comment=comment,
                comment_private=private,
            )
            return cs.id

    def artifact_of(self, changeset_id: int) -> int:
        from herald.tracker.models import Changeset

        with self.db.session() as s:
            return s.get(Changeset, changeset_id).artifact_id

    def follow(self, name: str, artifact_id: int) -> None:
        with self.db.session() as s:
            follow(s, artifact_id, self._u(s, name))

    def unsubscribe(self, name: str, artifact_id: int) -> None:
        with self.db.session() as s:
            unsubscribe(s, artifact_id, self._u(s, name))

    def unsubscribe_tracker(self, name: str, tracker_id: int) -> None:
        with self.db.session() as s:
            unsubscribe_tracker(s, tracker_id, self._u(s, name))

    def suspend(self, name: str) -> None:
        self.raw(lambda s: setattr(self._u(s, name), "status", UserStatus.SUSPENDED))

    def raw(self, change: Callable[[Session], Any]) -> Any:
        """Write through the models directly: for data the services would refuse (hostile input)."""
        with self.db.session() as s:
            return change(s)

    # --- the notifier ---------------------------------------------------------------------------------

    def recipients(self, changeset_id: int) -> dict[str, Recipient]:
        with self.db.session() as s:
            return {r.address: r for r in compute_recipients(s, changeset_id)}

    def reasons(self, changeset_id: int) -> dict[str, str]:
        """``{username: reason}`` (bare addresses keep their address as key)."""
        by_id = {uid: name for name, uid in self.users.items()}
        return {
            (by_id[r.user_id] if r.user_id is not None else addr): str(r.reason)
            for addr, r in self.recipients(changeset_id).items()
        }

    def plan(self, changeset_id: int) -> NotificationPlan:
        with self.db.session() as s:
            plan = plan_notification(s, self.settings, changeset_id, SECRET)
        assert plan is not None
        return plan

    def mails(self, changeset_id: int) -> dict[str, Mail]:
        """``{username or address: received mail}``, built as the delivery sends them (wire bytes)."""
        by_id = {uid: name for name, uid in self.users.items()}
        with self.db.read() as s:
            prepared = prepare_change(s, self.settings, changeset_id, SECRET)
        assert prepared is not None
        return {
            (by_id[r.user_id] if r.user_id is not None else r.address): as_sent(prepared.wire(r).raw)
            for r in prepared.recipients
        }

    def mails_via_email_package(self, changeset_id: int) -> dict[str, Mail]:
        """The same mails built with one ``EmailMessage`` each (the reference the wire bytes must match)."""
        by_id = {uid: name for name, uid in self.users.items()}
        return {
            (by_id[o.user_id] if o.user_id is not None else o.address): as_received(o.message)
            for o in self.plan(changeset_id).outgoing
        }


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'notify.db'}")
    Base.metadata.create_all(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(env={"HERALD_BASE_URL": BASE_URL, "HERALD_DATA_DIR": str(tmp_path)})


@pytest.fixture
def scene(db: Database, settings: Settings) -> Scene:
    return Scene(db, settings)


@dataclass
class World:
    """The usual cast: a public project ``demo`` and a private one ``secret``, each with a bug tracker.

    alice: admin of both; bob: member of demo (French, Paris); carol: member of secret only;
    dave, erin: registered, members of nothing.
    """

    scene: Scene
    demo: int
    secret: int
    bugs: int
    secret_bugs: int


@pytest.fixture
def world(scene: Scene) -> World:
    scene.user("alice", timezone="UTC")
    scene.user("bob", language="fr", timezone="Europe/Paris")
    scene.user("carol", timezone="America/New_York")
    scene.user("dave")
    scene.user("erin")
    demo = scene.project("demo", members=["bob"], admins=["alice"])
    secret = scene.project("secret", public=False, members=["carol"], admins=["alice"])
    return World(scene, demo, secret, scene.tracker(demo), scene.tracker(secret))
