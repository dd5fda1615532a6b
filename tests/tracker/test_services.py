"""Tracker services on SQLite and PostgreSQL: every change validated, one changeset each."""

from __future__ import annotations

import itertools
import threading

import pytest
from sqlalchemy import func, select

from herald.tracker.artifacts import create_artifact, get_artifact, mentioned_usernames, update_artifact
from herald.tracker.db import Database
from herald.tracker.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from herald.tracker.models import (
    Artifact,
    ArtifactSubscription,
    Changeset,
    SubscriptionState,
    TrackerUnsubscription,
    User,
    UserStatus,
)
from herald.tracker.projects import create_project
from herald.tracker.subscriptions import clear_subscription, follow, unsubscribe, unsubscribe_tracker
from herald.tracker.trackers import create_tracker
from herald.tracker.users import authenticate, create_user, update_user
from tests.support.tracker import World, build_world


def _user(s, world: World, name: str) -> User:
    return s.get(User, world.users[name].id)


def _new_bug(db: Database, world: World, author: str = "alice", **values) -> int:
    with db.session() as s:
        cs = create_artifact(
            s, tracker_id=world.bugs.id, author=_user(s, world, author), values={"title": "A bug", **values}
        )
        return cs.artifact_id


@pytest.fixture
def db_world(any_db: Database) -> tuple[Database, World]:
    return any_db, build_world(any_db)


class TestUsers:
    def test_token_authenticates_and_only_its_hash_is_stored(self, db_world):
        db, world = db_world
        with db.session() as s:
            user = authenticate(s, world.tokens["alice"])
            assert user is not None and user.username == "alice"
            assert world.tokens["alice"] not in (user.token_hash,)
            assert authenticate(s, "not-a-token") is None
            assert authenticate(s, "") is None

    def test_suspended_user_cannot_authenticate(self, db_world):
        db, world = db_world
        with db.session() as s:
            update_user(s, world.users["dave"].id, {"status": "suspended"})
        with db.session() as s:
            assert authenticate(s, world.tokens["dave"]) is None
            assert s.get(User, world.users["dave"].id).status is UserStatus.SUSPENDED

    @pytest.mark.parametrize(
        ("attrs", "field"),
        [
            ({"username": "Bad Name", "email": "x@example.org"}, "username"),
            ({"username": "ok", "email": "not-an-address"}, "email"),
            ({"username": "ok", "email": "a@b.c\r\nBcc: x@evil.org"}, "email"),
            ({"username": "ok", "email": "jos\u00e9@example.org"}, "email"),
            ({"username": "ok", "email": "=?utf-8?q?a=0D=0A?=@example.org"}, "email"),
            ({"username": "ok", "email": "x@example.org", "language": "de"}, "language"),
            ({"username": "ok", "email": "x@example.org", "timezone": "Mars/Olympus"}, "timezone"),
            ({"username": "ok", "email": "x@example.org", "mail_format": "pdf"}, "mail_format"),
            (
                {"username": "ok", "email": "x@example.org", "real_name": "Eve\r\nBcc: x@evil.org"},
                "real_name",
            ),
            ({"username": "ok", "email": "x@example.org", "notify_own_changes": "yes"}, "notify_own_changes"),
        ],
    )
    def test_invalid_user_is_refused_and_nothing_is_written(self, sqlite_db, attrs, field):
        with pytest.raises(InvalidInput) as err, sqlite_db.session() as s:
            create_user(s, **attrs)
        assert err.value.field == field
        with sqlite_db.session() as s:
            assert s.scalar(select(func.count(User.id))) == 0

    def test_duplicate_username_conflicts(self, sqlite_db):
        with sqlite_db.session() as s:
            create_user(s, username="jane", email="jane@example.org")
        with pytest.raises(Conflict), sqlite_db.session() as s:
            create_user(s, username="jane", email="other@example.org")


class TestTrackers:
    def _spec(self, world: World, **over):
        spec = {
            "project_id": world.public.id,
            "name": "tasks",
            "fields": [{"name": "title", "type": "string"}],
        }
        spec.update(over)
        return spec

    @pytest.mark.parametrize(
        ("over", "fragment"),
        [
            ({"fields": []}, "fields must be a list"),
            ({"fields": [{"name": "x", "type": "blob"}]}, "fields[0].type"),
            ({"fields": [{"name": "x", "type": "select"}]}, "fields[0].options"),
            ({"fields": [{"name": "x", "type": "select", "options": ["a", "a"]}]}, "twice"),
            ({"fields": [{"name": "x", "type": "string", "notify": True}]}, "notify applies"),
            ({"fields": [{"name": "x", "type": "string"}, {"name": "x", "type": "int"}]}, "used twice"),
            ({"fields": [{"name": "x", "type": "string", "colour": "red"}]}, "unknown key"),
            ({"semantics": {"title": "nope"}}, "semantics.title"),
            ({"semantics": {"status": "title"}}, "semantics.status must be a select"),
            ({"notifications": {"mode": "sometimes"}}, "notifications.mode"),
            ({"notifications": {"lists": [{"addresses": ["bad"]}]}}, "addresses"),
            ({"notifications": {"lists": [{"users": ["ghost"]}]}}, "ghost"),
            ({"project_id": 999}, "project 999"),
        ],
    )
    def test_bad_specs_are_refused_with_the_reason(self, world, sqlite_db, over, fragment):
        with pytest.raises((InvalidInput, NotFound)) as err, sqlite_db.session() as s:
            create_tracker(s, self._spec(world, **over))
        assert fragment in err.value.message

    def test_semantics_and_lists_are_stored(self, world, sqlite_db):
        with sqlite_db.session() as s:
            t = create_tracker(
                s,
                self._spec(
                    world,
                    fields=[
                        {"name": "title", "type": "string"},
                        {"name": "state", "type": "select", "options": ["New", "Done"]},
                        {"name": "owner", "type": "user", "notify": True},
                    ],
                    semantics={
                        "title": "title",
                        "status": "state",
                        "open_values": ["New"],
                        "assigned_to": "owner",
                    },
                    notifications={
                        "mode": "status_change_only",
                        "lists": [{"addresses": ["Team@Example.org"], "users": ["bob"], "on_updates": False}],
                    },
                ),
            )
            assert t.field_by_id(t.status_field_id).name == "state"
            assert t.open_values == ["New"]
            assert t.global_lists[0].addresses == ["team@example.org"]
            assert t.global_lists[0].user_ids == [world.users["bob"].id]
            assert t.notification_mode.value == "status_change_only"


class TestArtifacts:
    def test_creation_writes_the_changeset(self, db_world):
        db, world = db_world
        with db.session() as s:
            cs = create_artifact(
                s,
                tracker_id=world.bugs.id,
                author=_user(s, world, "alice"),
                values={
                    "title": "Crash",
                    "status": "Open",
                    "assigned_to": "bob",
                    "cc": ["carol", world.users["dave"].id],
                },
                comment="Seen by @carol and @nobody.",
            )
            cs_id = cs.id
        with db.session() as s:
            cs = s.get(Changeset, cs_id)
            assert cs.is_creation
            assert cs.mentioned_user_ids == [world.users["carol"].id]
            assert {c.new_value for c in cs.changes if isinstance(c.new_value, str)} >= {"Crash", "Open"}
            art = s.get(Artifact, cs.artifact_id)
            cc_field = world.bugs.field_by_name("cc")
            assert art.value_of(cc_field.id) == sorted([world.users["carol"].id, world.users["dave"].id])

    def test_update_records_old_and_new_values(self, db_world):
        db, world = db_world
        art_id = _new_bug(db, world, status="Open")
        with db.session() as s:
            cs = update_artifact(
                s, artifact_id=art_id, author=_user(s, world, "bob"), values={"status": "Fixed"}
            )
            changes = [(c.old_value, c.new_value) for c in cs.changes]
            assert changes == [("Open", "Fixed")]
            assert cs.artifact.version == 2

    @pytest.mark.parametrize(
        ("values", "fragment"),
        [
            ({"status": "Bogus"}, "must be one of"),
            ({"severity": "3"}, "whole number"),
            ({"severity": True}, "whole number"),
            ({"severity": 2**70}, "whole number"),
            ({"estimate": float("nan")}, "finite"),
            ({"due": "2026-02-30"}, "real date"),
            ({"due": "tomorrow"}, "YYYY-MM-DD"),
            ({"assigned_to": 9999}, "does not exist"),
            ({"assigned_to": "ghost"}, "no user named"),
            ({"cc": "alice"}, "list"),
            ({"title": "two\nlines"}, "one line"),
            ({"title": "x" * 300}, "at most 255"),
            ({"description": "bell\x07"}, "control"),
            ({"nosuchfield": 1}, "no field"),
            ({"title": None}, "required"),
        ],
    )
    def test_invalid_values_are_refused_and_nothing_changes(self, sqlite_db, world, values, fragment):
        art_id = _new_bug(sqlite_db, world)
        with pytest.raises(InvalidInput) as err, sqlite_db.session() as s:
            update_artifact(s, artifact_id=art_id, author=_user(s, world, "alice"), values=values)
        assert fragment in err.value.message
        with sqlite_db.session() as s:
            assert s.scalar(select(func.count(Changeset.id))) == 1
            assert s.get(Artifact, art_id).version == 1

    def test_required_field_missing_on_creation(self, sqlite_db, world):
        with pytest.raises(InvalidInput, match="required"), sqlite_db.session() as s:
            create_artifact(s, tracker_id=world.bugs.id, author=_user(s, world, "alice"), values={})

    def test_update_changing_nothing_is_refused(self, sqlite_db, world):
        art_id = _new_bug(sqlite_db, world)
        with pytest.raises(InvalidInput, match="changes nothing"), sqlite_db.session() as s:
            update_artifact(s, artifact_id=art_id, author=_user(s, world, "alice"), values={"title": "A bug"})

    def test_permissions_of_the_acting_user(self, sqlite_db, world):
        art_id = _new_bug(sqlite_db, world)
        with sqlite_db.session() as s:
            dave = _user(s, world, "dave")  # not a member of the public project
            with pytest.raises(PermissionDenied):
                update_artifact(s, artifact_id=art_id, author=dave, values={"status": "Closed"})
            # ...but may comment on a public artifact,
            update_artifact(s, artifact_id=art_id, author=dave, comment="me too")
            # not privately,
            with pytest.raises(PermissionDenied):
                update_artifact(s, artifact_id=art_id, author=dave, comment="psst", comment_private=True)
            # and may not set a field it cannot read.
            bob = _user(s, world, "bob")  # member, not admin
            with pytest.raises(PermissionDenied):
                update_artifact(s, artifact_id=art_id, author=bob, values={"security_score": 9})
        with sqlite_db.session() as s:
            dave = _user(s, world, "dave")
            # A private tracker is not there for a non-member (issue 9, defect 3).
            with pytest.raises(NotFound):
                create_artifact(s, tracker_id=world.secret_bugs.id, author=dave, values={"title": "x"})
            with pytest.raises(NotFound):
                get_artifact(s, art_id + 1000, dave)

    def test_private_artifact_is_invisible_to_outsiders(self, sqlite_db, world):
        with sqlite_db.session() as s:
            cs = create_artifact(
                s,
                tracker_id=world.secret_bugs.id,
                author=_user(s, world, "carol"),
                values={"title": "Hidden"},
            )
            art_id = cs.artifact_id
        with sqlite_db.session() as s:
            with pytest.raises(NotFound):
                get_artifact(s, art_id, _user(s, world, "bob"))
            with pytest.raises(NotFound):
                update_artifact(s, artifact_id=art_id, author=_user(s, world, "bob"), comment="hi")
            assert get_artifact(s, art_id, _user(s, world, "alice")).id == art_id

    def test_expected_version_detects_a_stale_edit(self, sqlite_db, world):
        art_id = _new_bug(sqlite_db, world)
        with sqlite_db.session() as s:
            update_artifact(s, artifact_id=art_id, author=_user(s, world, "alice"), values={"severity": 1})
        with pytest.raises(Conflict), sqlite_db.session() as s:
            update_artifact(
                s,
                artifact_id=art_id,
                author=_user(s, world, "alice"),
                values={"severity": 2},
                expected_version=1,
            )

    def test_concurrent_updates_lose_no_change(self, db_world):
        db, world = db_world
        art_id = _new_bug(db, world)
        names = ["alice", "bob"] * 4
        errors: list[BaseException] = []

        def work(i: int, name: str) -> None:
            try:
                with db.session() as s:
                    update_artifact(
                        s,
                        artifact_id=art_id,
                        author=_user(s, world, name),
                        comment=f"comment {i}",
                        values={"severity": i} if i % 2 else {"estimate": float(i)},
                    )
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i, n)) for i, n in enumerate(names)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        with db.session() as s:
            art = s.get(Artifact, art_id)
            assert art.version == 1 + len(names)
            changesets = s.scalars(select(Changeset).where(Changeset.artifact_id == art_id)).all()
            assert sorted(c.comment for c in changesets if c.comment) == sorted(
                f"comment {i}" for i in range(8)
            )
            # Each changeset's old value is the previous one's new value: no update diffed against stale data.
            sev = world.bugs.field_by_name("severity").id
            chain = [ch for c in changesets for ch in c.changes if ch.field_id == sev]
            for before, after in itertools.pairwise(chain):
                assert after.old_value == before.new_value


class TestSubscriptions:
    def test_follow_unsubscribe_clear(self, db_world):
        db, world = db_world
        art_id = _new_bug(db, world)
        with db.session() as s:
            follow(s, art_id, _user(s, world, "dave"))
        with db.session() as s:
            assert (
                s.get(ArtifactSubscription, (art_id, world.users["dave"].id)).state
                is SubscriptionState.FOLLOWING
            )
            unsubscribe(s, art_id, _user(s, world, "dave"))
        with db.session() as s:
            sub = s.get(ArtifactSubscription, (art_id, world.users["dave"].id))
            assert sub.state is SubscriptionState.UNSUBSCRIBED
            clear_subscription(s, art_id, _user(s, world, "dave"))
        with db.session() as s:
            assert s.get(ArtifactSubscription, (art_id, world.users["dave"].id)) is None
            unsubscribe_tracker(s, world.bugs.id, _user(s, world, "dave"))
            unsubscribe_tracker(s, world.bugs.id, _user(s, world, "dave"))  # idempotent
        with db.session() as s:
            assert s.get(TrackerUnsubscription, (world.bugs.id, world.users["dave"].id)) is not None

    def test_cannot_follow_what_one_cannot_read(self, sqlite_db, world):
        with sqlite_db.session() as s:
            art = create_artifact(
                s, tracker_id=world.secret_bugs.id, author=_user(s, world, "alice"), values={"title": "x"}
            ).artifact_id
        with pytest.raises(NotFound), sqlite_db.session() as s:
            follow(s, art, _user(s, world, "bob"))


def test_mentions_are_parsed_like_a_person_reads_them():
    assert mentioned_usernames("ping @bob, @Carol. mail me at x@alice.org or see a/@dave") == ["bob", "carol"]
    assert mentioned_usernames("@bob @bob @bob.") == ["bob"]


def test_project_members_and_admins(sqlite_db, world):
    with sqlite_db.session() as s:
        p = create_project(s, name="third", members=["bob"], admins=["bob", "carol"])
        roles = {m.user_id: m.role.value for m in p.memberships}
        assert roles == {world.users["bob"].id: "admin", world.users["carol"].id: "admin"}
        with pytest.raises(Conflict):
            create_project(s, name="third")
