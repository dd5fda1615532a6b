"""Per-recipient content: permissions, snapshot as of the changeset, language and time zone, escaping, and
renderings shared between recipients."""

from __future__ import annotations

from datetime import datetime

from herald.tracker.models import Changeset, Membership, Role, User
from tests.notify.conftest import BASE_URL, FIELDS, World

NOTES = "MEMBERS-ONLY-7731"
SCORE = 97531
PRIVATE = "PRIVATE-REMARK-4242"
SECRET_TITLE = "SECRET-TITLE-8086"


def _at(scene, changeset_id: int, when: datetime) -> None:
    scene.raw(lambda s: setattr(s.get(Changeset, changeset_id), "created_at", when))


class TestPermissionFiltering:
    def test_fields_hidden_per_recipient_everywhere(self, world: World):
        s = world.scene
        s.user("ada")
        s.raw(
            lambda session: session.add(
                Membership(project_id=world.demo, user_id=s.users["ada"], role=Role.ADMIN)
            )
        )
        cs = s.create(
            "alice",
            world.bugs,
            title="Visible title",
            cc=["ada", "bob", "dave"],
            internal_notes=NOTES,
            security_score=SCORE,
        )
        mails = s.mails(cs)
        ada, bob, dave = mails["ada"].everything(), mails["bob"].everything(), mails["dave"].everything()
        assert NOTES in ada and str(SCORE) in ada
        assert NOTES in bob and str(SCORE) not in bob
        assert NOTES not in dave and str(SCORE) not in dave
        assert "Internal notes" not in dave and "Security score" not in dave
        assert all("Visible title" in m.subject for m in mails.values())

    def test_changed_fields_hidden_too(self, world):
        s = world.scene
        cs = s.create("alice", world.bugs, cc=["bob", "dave"], internal_notes="old notes")
        update = s.update("alice", s.artifact_of(cs), severity=2, internal_notes=NOTES, security_score=SCORE)
        mails = s.mails(update)
        assert NOTES in mails["bob"].text and "old notes" in mails["bob"].text
        for part in (mails["dave"].text, mails["dave"].html):
            assert NOTES not in part and "old notes" not in part and str(SCORE) not in part
            assert "Severity" in part

    def test_unreadable_title_leaves_the_subject_without_title(self, world):
        s = world.scene
        fields = [dict(f) for f in FIELDS]
        fields[0]["read_permission"] = "members"
        vault = s.tracker(world.demo, name="vault", fields=fields)
        cs = s.create("alice", vault, title=SECRET_TITLE, status="Open", cc=["bob", "dave"])
        art = s.artifact_of(cs)
        mails = s.mails(cs)
        assert mails["bob"].subject == f"[bug #{art}] {SECRET_TITLE}"
        assert mails["dave"].subject == f"[bug #{art}]"
        assert SECRET_TITLE not in mails["dave"].everything()
        assert SECRET_TITLE not in mails["dave"].raw.decode("ascii", "replace")

    def test_private_comment_only_for_members(self, world):
        s = world.scene
        cs = s.create("alice", world.bugs, cc=["bob", "dave"])
        update = s.update("alice", s.artifact_of(cs), severity=3, comment=PRIVATE, private=True)
        mails = s.mails(update)
        assert PRIVATE in mails["bob"].text and PRIVATE in mails["bob"].html
        assert "Commentaire privé" in mails["bob"].text
        assert PRIVATE not in mails["dave"].everything()
        assert "comment" not in mails["dave"].text.lower()


class TestSnapshot:
    def test_snapshot_is_as_of_the_changeset_not_as_of_now(self, world):
        s = world.scene
        created = s.create("alice", world.bugs, title="First title", status="Open", cc=["dave"])
        art = s.artifact_of(created)
        middle = s.update("alice", art, title="Second title", status="Fixed")
        s.update("alice", art, title="Third title", status="Closed", severity=9)
        mail = s.mails(middle)["dave"]
        assert mail.subject == f"[bug #{art}] Second title"
        assert "Status: Open -> Fixed" in mail.text
        snapshot = mail.text.split("Fields after this change:")[1]
        assert "Title: Second title" in snapshot and "Status: Fixed" in snapshot
        assert "Third" not in mail.everything() and "Closed" not in mail.everything()
        assert "Severity" not in snapshot
        first = s.mails(created)["dave"]
        assert first.subject == f"[bug #{art}] First title" and "Status: Open" in first.text

    def test_emptied_fields_leave_the_snapshot(self, world):
        s = world.scene
        created = s.create("alice", world.bugs, cc=["dave"], severity=4)
        update = s.update("alice", s.artifact_of(created), severity=None)
        text = s.mails(update)["dave"].text
        assert "Severity: 4 -> (empty)" in text
        assert "Severity" not in text.split("Fields after this change:")[1]


class TestLanguageAndTime:
    def test_french_in_paris_and_english_in_new_york(self, world):
        s = world.scene
        s.user("nina", timezone="America/New_York")
        created = s.create("alice", world.bugs, cc=["bob", "nina"])
        update = s.update("alice", s.artifact_of(created), status="Fixed", comment="done")
        _at(s, update, datetime(2024, 5, 7, 12, 0))
        mails = s.mails(update)
        fr, en = mails["bob"], mails["nina"]
        assert "Alice a modifié bug" in fr.text and "mardi 7 mai 2024 à 14:00 (CEST)" in fr.text
        assert (
            "Modifications\u00a0:" in fr.text and "Vous recevez ce courriel car vous êtes en copie" in fr.text
        )
        assert "Alice updated bug" in en.text and "Tuesday May 7, 2024 at 08:00 (EDT)" in en.text
        assert "Changes:" in en.text and "in copy of this bug" in en.text
        assert 'lang="fr"' in fr.html and 'lang="en"' in en.html
        assert fr.message["Date"] == en.message["Date"] == "Tue, 07 May 2024 12:00:00 +0000"

    def test_unknown_time_zone_reads_utc(self, world):
        s = world.scene
        s.raw(lambda session: setattr(session.get(User, s.users["dave"]), "timezone", "Mars/Olympus"))
        cs = s.create("alice", world.bugs, cc=["dave"])
        _at(s, cs, datetime(2024, 1, 2, 3, 4))
        assert "January 2, 2024 at 03:04 (UTC)" in s.mails(cs)["dave"].text


class TestContent:
    def test_html_escapes_and_text_does_not(self, world):
        s = world.scene
        cs = s.create(
            "alice",
            world.bugs,
            title="<script>alert(1)</script>",
            cc=["dave"],
            description='<img src=x onerror="alert(2)">',
            comment="<b>bold</b> & <i>co</i>",
        )
        mail = s.mails(cs)["dave"]
        assert "<script>" not in mail.html and "&lt;script&gt;alert(1)&lt;/script&gt;" in mail.html
        assert "<img" not in mail.html and "&lt;img" in mail.html
        assert "<b>" not in mail.html and "&lt;b&gt;bold&lt;/b&gt; &amp;" in mail.html
        assert "<script>alert(1)</script>" in mail.text and "<b>bold</b> & <i>co</i>" in mail.text
        assert "style=" in mail.html and "<link" not in mail.html and "<style" not in mail.html

    def test_link_reason_and_unsubscribe_in_both_parts(self, world):
        s = world.scene
        cs = s.create("alice", world.bugs, cc=["dave"])
        art = s.artifact_of(cs)
        mail = s.mails(cs)["dave"]
        for part in (mail.text, mail.html):
            assert f"{BASE_URL}/artifacts/{art}" in part
            assert "because you are in copy of this bug" in part
            assert f"{BASE_URL}/unsubscribe/{s.users['dave']}-{art}-" in part

    def test_who_changed_what(self, world):
        s = world.scene
        cs = s.create("alice", world.bugs, cc=["dave"], status="Open")
        art = s.artifact_of(cs)
        created = s.mails(cs)["dave"].text
        assert created.startswith(f"Alice created bug #{art}")
        assert "Changes:" not in created  # the snapshot already lists every value
        updated = s.mails(s.update("bob", art, status="Fixed", cc=["dave", "erin"]))["dave"].text
        assert updated.startswith(f"Bob updated bug #{art}")
        assert "Status: Open -> Fixed" in updated and "Cc: Dave -> Dave, Erin" in updated


class TestSharedRenderings:
    def test_fifty_recipients_in_two_languages_share_two_renderings(self, world):
        s = world.scene
        names = [f"user{i:02d}" for i in range(50)]
        for i, name in enumerate(names):
            s.user(name, language="fr" if i % 2 else "en")
        plan = s.plan(s.create("alice", world.bugs, cc=names))
        assert plan.recipients == 50
        assert plan.renderings == 2
        # Shared bodies, personal links: each mail carries its own recipient's token.
        by_user = {o.user_id: o for o in plan.outgoing}
        for name in names[:3]:
            text = by_user[s.users[name]].message.get_body(("plain",)).get_content()
            assert f"/unsubscribe/{s.users[name]}-" in text

    def test_different_views_get_different_renderings(self, world):
        s = world.scene
        s.user("tess", mail_format="text")
        plan = s.plan(s.create("alice", world.bugs, assigned_to="dave", cc=["bob", "erin", "tess"]))
        # dave: assigned; erin: cc; bob: cc in French; tess: cc, text only. Four views.
        assert (plan.recipients, plan.renderings) == (4, 4)

    def test_readers_differing_only_on_empty_fields_share(self, world):
        s = world.scene
        s.user("ada")
        s.raw(
            lambda session: session.add(
                Membership(project_id=world.demo, user_id=s.users["ada"], role=Role.ADMIN)
            )
        )
        # ada (admin) may read the members' and admins' fields, dave and erin may not; both are empty.
        plan = s.plan(s.create("alice", world.bugs, cc=["dave", "erin", "ada"]))
        assert (plan.recipients, plan.renderings) == (3, 1)
        plan = s.plan(s.create("alice", world.bugs, cc=["dave", "erin", "ada"], security_score=1))
        assert (plan.recipients, plan.renderings) == (3, 2)
