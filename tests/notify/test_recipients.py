"""Recipient rules one by one, on data made through the tracker services."""

from __future__ import annotations

import pytest

from herald.tracker.models import ArtifactSubscription, Membership, Role, SubscriptionState, User
from tests.notify.conftest import FIELDS, World


def _bug(world: World, author: str = "alice", **values) -> tuple[int, int]:
    cs = world.scene.create(author, world.bugs, **values)
    return cs, world.scene.artifact_of(cs)


class TestWhoIsNotified:
    def test_assigned_to_semantic_notifies_without_the_notify_flag(self, world):
        cs, _ = _bug(world, assigned_to="bob")
        assert world.scene.reasons(cs) == {"bob": "assigned"}

    def test_notifying_users_field_gives_cc(self, world):
        cs, _ = _bug(world, cc=["bob", "dave"])
        assert world.scene.reasons(cs) == {"bob": "cc", "dave": "cc"}

    def test_user_field_without_notify_is_no_reason(self, world):
        cs, _ = _bug(world, reviewer="bob")
        assert world.scene.reasons(cs) == {}

    def test_submitter(self, world):
        _, art = _bug(world, author="bob")
        cs = world.scene.update("alice", art, status="Fixed")
        assert world.scene.reasons(cs) == {"bob": "submitter"}

    def test_commentators_of_the_artifact(self, world):
        _, art = _bug(world)
        world.scene.update("dave", art, comment="me too")
        cs = world.scene.update("alice", art, status="Fixed")
        assert world.scene.reasons(cs) == {"dave": "commented"}

    def test_mentioned_users(self, world):
        _, art = _bug(world)
        cs = world.scene.update("alice", art, comment="@erin and @dave, please look")
        assert world.scene.reasons(cs) == {"dave": "mentioned", "erin": "mentioned"}

    def test_followers(self, world):
        _, art = _bug(world)
        world.scene.follow("erin", art)
        cs = world.scene.update("alice", art, severity=3)
        assert world.scene.reasons(cs) == {"erin": "following"}

    def test_global_lists_on_updates_false_hear_creations_only(self, world):
        s = world.scene
        bugs = s.tracker(
            world.demo,
            name="tasks",
            lists=[
                {"users": ["dave"], "addresses": ["team@example.net"]},
                {"addresses": ["new-only@example.net"], "on_updates": False},
            ],
        )
        created = s.create("alice", bugs)
        assert s.reasons(created) == {
            "dave": "list",
            "team@example.net": "list",
            "new-only@example.net": "list",
        }
        updated = s.update("alice", s.artifact_of(created), severity=2)
        assert s.reasons(updated) == {"dave": "list", "team@example.net": "list"}

    def test_strongest_reason(self, world):
        s = world.scene
        _, art = _bug(world, author="bob", assigned_to="bob", cc=["bob"])
        s.follow("bob", art)
        s.update("bob", art, comment="noted")
        cs = s.update("alice", art, comment="@bob ok")
        assert s.reasons(cs) == {"bob": "assigned"}
        recipient = s.recipients(cs)["bob@example.org"]
        assert (recipient.language, recipient.timezone, recipient.mail_format) == (
            "fr",
            "Europe/Paris",
            "html",
        )


class TestRemovals:
    def test_suspended_users(self, world):
        cs, _ = _bug(world, cc=["bob", "dave"])
        world.scene.suspend("dave")
        assert world.scene.reasons(cs) == {"bob": "cc"}

    def test_one_mail_per_address_case_insensitive(self, world):
        s = world.scene
        s.user("bob2")
        s.raw(lambda session: setattr(session.get(User, s.users["bob2"]), "email", "BOB@example.org"))
        cs, _ = _bug(world, assigned_to="bob2", cc=["bob"])
        recipients = s.recipients(cs)
        assert len(recipients) == 1
        (only,) = recipients.values()
        assert (only.user_id, only.reason) == (s.users["bob2"], "assigned")

    def test_list_address_of_a_user_is_still_a_list(self, world):
        # Issue 9, defect 2: a user's state or preferences never silence a global list address.
        s = world.scene
        tasks = s.tracker(
            world.demo, name="tasks", lists=[{"addresses": ["ALICE@example.org", "bob@example.org"]}]
        )
        s.suspend("bob")
        cs = s.create("alice", tasks)  # alice is the author, bob is suspended: the list still hears
        recipients = s.recipients(cs)
        assert {a: (r.user_id, r.reason) for a, r in recipients.items()} == {
            "alice@example.org": (None, "list"),
            "bob@example.org": (None, "list"),
        }

    def test_author_is_not_told_of_own_changes(self, world):
        cs, _ = _bug(world, assigned_to="alice")
        assert world.scene.reasons(cs) == {}

    def test_author_who_opted_in_is_told(self, world):
        s = world.scene
        s.user("olive", notify_own_changes=True)
        cs, _ = _bug(world, author="olive", assigned_to="olive")
        assert s.reasons(cs) == {"olive": "assigned"}

    def test_unsubscribed_from_artifact_except_when_mentioned(self, world):
        s = world.scene
        _, art = _bug(world, assigned_to="bob", cc=["dave"])
        s.unsubscribe("bob", art)
        s.unsubscribe("dave", art)
        cs = s.update("alice", art, status="Fixed")
        assert s.reasons(cs) == {}
        cs = s.update("alice", art, comment="@bob what do you think?")
        assert s.reasons(cs) == {"bob": "mentioned"}

    def test_unsubscribed_from_tracker_except_when_mentioned(self, world):
        s = world.scene
        s.unsubscribe_tracker("bob", world.bugs)
        cs, art = _bug(world, assigned_to="bob")
        assert s.reasons(cs) == {}
        cs = s.update("alice", art, comment="ping @bob")
        assert s.reasons(cs) == {"bob": "mentioned"}

    def test_non_members_of_a_private_project_whatever_brought_them(self, world):
        s = world.scene
        secret = s.tracker(
            world.secret,
            name="private-tasks",
            lists=[{"users": ["dave"], "addresses": ["team@example.net"], "check_permissions": False}],
        )
        cs = s.create("alice", secret, cc=["carol"], comment="@erin @carol have a look")
        art = s.artifact_of(cs)
        # A follow row for a non-member, as an old subscription would leave behind after losing membership.
        s.raw(
            lambda session: session.add(
                ArtifactSubscription(
                    artifact_id=art, user_id=s.users["bob"], state=SubscriptionState.FOLLOWING
                )
            )
        )
        assert s.reasons(cs) == {"carol": "cc"}
        update = s.update("alice", art, status="Fixed")
        assert s.reasons(update) == {"carol": "cc"}

    def test_bare_address_is_an_anonymous_reader(self, world):
        s = world.scene
        tasks = s.tracker(world.demo, name="tasks", lists=[{"addresses": ["team@example.net"]}])
        cs = s.create("alice", tasks, internal_notes="members only")
        team = s.recipients(cs)["team@example.net"]
        assert team.user is None and team.reason == "list"
        fields = {f.name: f.id for f in _fields(s, tasks)}
        assert fields["internal_notes"] not in team.access.field_ids
        assert fields["title"] in team.access.field_ids
        # Changing only a members' field tells the anonymous reader nothing: no mail.
        update = s.update("alice", s.artifact_of(cs), internal_notes="still members only")
        assert "team@example.net" not in s.recipients(update)

    def test_list_without_permission_checks_sees_every_field_of_a_public_artifact(self, world):
        s = world.scene
        tasks = s.tracker(
            world.demo,
            name="tasks",
            lists=[{"addresses": ["team@example.net"], "check_permissions": False}],
        )
        cs = s.create("alice", tasks, security_score=9)
        team = s.recipients(cs)["team@example.net"]
        assert team.access.field_ids == {f.id for f in _fields(s, tasks)}

    def test_users_who_can_read_nothing_of_the_change(self, world):
        s = world.scene
        _, art = _bug(world, cc=["bob", "dave"])
        cs = s.update("alice", art, security_score=5)  # admins only: bob is a member, dave nothing
        assert s.reasons(cs) == {}
        cs = s.update("alice", art, internal_notes="for members")
        assert s.reasons(cs) == {"bob": "cc"}
        cs = s.update("alice", art, comment="members only", private=True)
        assert s.reasons(cs) == {"bob": "cc"}
        cs = s.update("alice", art, comment="for everyone")
        assert s.reasons(cs) == {"bob": "cc", "dave": "cc"}

    def test_mention_in_a_private_comment_skips_non_members(self, world):
        s = world.scene
        _, art = _bug(world)
        cs = s.update("alice", art, severity=2, comment="@dave @bob internal only", private=True)
        assert s.reasons(cs) == {"bob": "mentioned"}

    def test_a_user_field_the_user_may_not_read_names_no_one(self, world):
        s = world.scene
        fields = [*FIELDS, {"name": "watchers", "type": "users", "notify": True, "read_permission": "admins"}]
        tracker = s.tracker(world.demo, name="watched", fields=fields)
        s.user("ada")
        s.raw(
            lambda session: session.add(
                Membership(project_id=world.demo, user_id=s.users["ada"], role=Role.ADMIN)
            )
        )
        cs = s.create("alice", tracker, watchers=["bob", "ada"])
        assert s.reasons(cs) == {"ada": "cc"}

    @pytest.mark.parametrize(
        ("mode", "on_create", "on_status", "on_other"),
        [
            ("all_updates", True, True, True),
            ("creation_only", True, False, False),
            ("status_change_only", True, True, False),
            ("stopped", False, False, False),
        ],
    )
    def test_tracker_modes(self, world, mode, on_create, on_status, on_other):
        s = world.scene
        tracker = s.tracker(world.demo, name=f"t-{mode.replace('_', '-')}", mode=mode)
        created = s.create("alice", tracker, status="Open", cc=["bob"])
        art = s.artifact_of(created)
        status = s.update("alice", art, status="Fixed")
        other = s.update("alice", art, severity=1, comment="no status change")
        assert [bool(s.reasons(c)) for c in (created, status, other)] == [on_create, on_status, on_other]


def _fields(scene, tracker_id):
    from herald.tracker.models import Tracker

    return scene.raw(lambda session: list(session.get(Tracker, tracker_id).fields))
