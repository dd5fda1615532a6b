"""Message headers: identity, threading, list handling, and hostile text that must not make headers."""

from __future__ import annotations

import email.utils
import re
from datetime import UTC

import pytest
from sqlalchemy import select

from herald.notify import verify_unsubscribe_token
from herald.notify.message import MailContext, build_message, message_id_for, thread_root_id
from herald.tracker.models import Changeset, Field, FieldChange, User
from tests.notify.conftest import DOMAIN, SECRET, World

HEADERS = [
    "subject",
    "date",
    "from",
    "to",
    "message-id",
    "in-reply-to",
    "references",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "auto-submitted",
    "x-auto-response-suppress",
    "x-herald-project",
    "x-herald-tracker",
    "x-herald-artifact-id",
    "x-herald-changeset-id",
    "x-herald-reason",
    "mime-version",
    "content-type",
]


def _poison(scene, changeset_id: int, field: str, value) -> None:
    """Store ``value`` as the new value of ``field`` in a changeset, past the services' validation."""

    def change(session):
        cs = session.get(Changeset, changeset_id)
        fid = session.scalar(
            select(Field.id).where(Field.tracker_id == cs.artifact.tracker_id, Field.name == field)
        )
        for fc in cs.changes:
            if fc.field_id == fid:
                fc.new_value = value
                break
        else:
            cs.changes.append(FieldChange(field_id=fid, old_value=None, new_value=value))
        cs.artifact.values = {**cs.artifact.values, str(fid): value}

    scene.raw(change)


class TestHeaders:
    def test_every_header_for_a_registered_recipient(self, world: World):
        s = world.scene
        cs = s.create("alice", world.bugs, title="Crash on save", assigned_to="bob")
        art = s.artifact_of(cs)
        mail = s.mails(cs)["bob"]
        msg = mail.message
        assert mail.header_names == HEADERS
        assert mail.subject == f"[bug #{art}] Crash on save"
        (sender,) = msg["From"].addresses
        assert (sender.display_name, sender.addr_spec) == ("Alice (herald)", f"noreply@{DOMAIN}")
        assert [a.addr_spec for a in msg["To"].addresses] == ["bob@example.org"]
        created = s.raw(lambda session: session.get(Changeset, cs).created_at)
        assert email.utils.parsedate_to_datetime(msg["Date"]) == created.replace(tzinfo=UTC, microsecond=0)
        assert msg["Message-ID"] == message_id_for(cs, "bob@example.org", DOMAIN)
        assert re.fullmatch(rf"<herald\.cs{cs}\.[0-9a-f]{{16}}@{re.escape(DOMAIN)}>", msg["Message-ID"])
        assert msg["In-Reply-To"] == msg["References"] == f"<herald.artifact{art}@{DOMAIN}>"
        assert msg["List-Id"] == f"<tracker-{world.bugs}.demo.{DOMAIN}>"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["Auto-Submitted"] == "auto-generated"
        assert msg["X-Auto-Response-Suppress"] == "All"
        assert (msg["X-Herald-Project"], msg["X-Herald-Tracker"]) == ("demo", "bugs")
        assert (msg["X-Herald-Artifact-ID"], msg["X-Herald-Changeset-ID"]) == (str(art), str(cs))
        assert msg["X-Herald-Reason"] == "assigned"

    def test_list_unsubscribe_carries_a_working_one_click_link_only(self, world):
        # Issue 9, defect 12: no mailto link, since nothing reads mail sent to it.
        s = world.scene
        cs = s.create("alice", world.bugs, assigned_to="bob")
        art = s.artifact_of(cs)
        mail = s.mails(cs)["bob"]
        # No encoded words: clients read these links raw.
        raw_header = re.search(rb"List-Unsubscribe: (.*?)\r\n(?! )", mail.raw, re.S).group(1)
        assert b"=?" not in raw_header and b"mailto" not in raw_header
        (https,) = re.fullmatch(r"<(\S+)>", str(mail.message["List-Unsubscribe"])).groups()
        assert https.startswith("https://tracker.example.org/unsubscribe/")
        assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        token = https.rsplit("/", 1)[1]
        assert verify_unsubscribe_token(SECRET, token) == (s.users["bob"], art)
        assert https in mail.text and https in mail.html

    def test_anonymous_list_address_gets_no_unsubscribe_link(self, world):
        s = world.scene
        tasks = s.tracker(world.demo, name="tasks", lists=[{"addresses": ["team@example.net"]}])
        mail = s.mails(s.create("alice", tasks))["team@example.net"]
        assert "list-unsubscribe" not in mail.header_names
        assert "/unsubscribe/" not in mail.text
        assert "administrator" in mail.text
        assert mail.message["To"].addresses[0].display_name == ""

    def test_text_only_preference_has_no_html_part(self, world):
        s = world.scene
        s.user("tess", mail_format="text")
        mail = s.mails(s.create("alice", world.bugs, cc=["tess"]))["tess"]
        assert mail.message.get_content_type() == "text/plain"
        assert mail.html is None

    def test_html_preference_has_both_parts(self, world):
        mail = world.scene.mails(world.scene.create("alice", world.bugs, cc=["dave"]))["dave"]
        assert mail.message.get_content_type() == "multipart/alternative"
        assert mail.text and mail.html

    def test_build_message_refuses_an_unsafe_address(self):
        mc = MailContext(DOMAIN, "https://x.org", "herald", 1, 1, 1, "bugs", "demo", "A", _now())
        with pytest.raises(ValueError):
            build_message(
                mc, address="a@b.org\r\nBcc: c@d.org", reason="cc", subject="s", text="t", html=None
            )


def _now():
    from datetime import datetime

    return datetime(2024, 5, 7, 14, 5, tzinfo=UTC)


class TestThreadingAndIdentity:
    def test_every_mail_about_one_artifact_shares_the_thread_root(self, world):
        s = world.scene
        first = s.create("alice", world.bugs, assigned_to="bob", cc=["dave"])
        art = s.artifact_of(first)
        second = s.update("bob", art, status="Fixed", comment="done")
        third = s.update("dave", art, comment="thanks @erin")
        mails = [m for cs in (first, second, third) for m in s.mails(cs).values()]
        assert len(mails) >= 6
        root = thread_root_id(art, DOMAIN)
        assert {m.message["References"] for m in mails} == {root}
        assert {m.message["In-Reply-To"] for m in mails} == {root}
        ids = [m.message["Message-ID"] for m in mails]
        assert len(ids) == len(set(ids)) and root not in ids

    def test_message_ids_are_the_same_on_every_plan(self, world):
        s = world.scene
        cs = s.create("alice", world.bugs, assigned_to="bob", cc=["dave", "erin"])
        first = {o.address: o.message_id for o in s.plan(cs).outgoing}
        again = {o.address: o.message_id for o in s.plan(cs).outgoing}
        assert first == again and len(set(first.values())) == 3
        assert all(o.message_id == o.message["Message-ID"] for o in s.plan(cs).outgoing)

    def test_message_id_ignores_address_case(self):
        assert message_id_for(7, "Bob@Example.org", DOMAIN) == message_id_for(7, "bob@example.org", DOMAIN)
        assert message_id_for(7, "bob@example.org", DOMAIN) != message_id_for(8, "bob@example.org", DOMAIN)


HOSTILE = [
    "Title\r\nBcc: evil@example.org",
    "Title\nX-Injected: yes",
    "Title\u2028Bcc: evil@example.org",
    "Title\x85Bcc: evil@example.org",
    "Title\x00Bcc: evil@example.org",
    "=?utf-8?q?Title=0D=0ABcc:_evil@example.org?=",
    "=?utf-8?b?VGl0bGUNCkJjYzogZXZpbEBleGFtcGxlLm9yZw==?=",
    "T" * 3000 + "\r\nBcc: evil@example.org",
    "Émile \r\n\r\n<script>alert(1)</script>",
    "a" * 80 + " <evil@example.org>, b",
    'Eve "Boss" (CEO) <evil@example.org>; x@y.org, \\ [a]:',
]


def _assert_clean(mail, expected_headers=HEADERS):
    assert mail.header_names == expected_headers
    assert mail.message["Bcc"] is None and mail.message["X-Injected"] is None
    for name, value in mail.message.items():
        assert "\r" not in value and "\n" not in value and "\x00" not in value, name
    (sender,) = mail.message["From"].addresses
    assert sender.addr_spec == f"noreply@{DOMAIN}"
    assert len(mail.message["To"].addresses) == 1
    # Header section of the raw bytes: every line is a header start or a folded continuation.
    head = mail.raw.split(b"\r\n\r\n", 1)[0]
    starts = [
        line.split(b":", 1)[0].lower().decode()
        for line in head.split(b"\r\n")
        if line[:1] not in (b" ", b"\t")
    ]
    assert starts == expected_headers


@pytest.mark.parametrize("hostile", HOSTILE)
class TestHeaderInjection:
    def test_in_titles(self, world, hostile):
        s = world.scene
        cs = s.create("alice", world.bugs, cc=["bob"])
        _poison(s, cs, "title", hostile)
        mail = s.mails(cs)["bob"]
        _assert_clean(mail)
        assert len(mail.subject) <= 200
        assert mail.subject.startswith(f"[bug #{s.artifact_of(cs)}] Title") or mail.subject.startswith(
            f"[bug #{s.artifact_of(cs)}] "
        )

    def test_in_field_values(self, world, hostile):
        s = world.scene
        cs = s.create("alice", world.bugs, cc=["bob"])
        _poison(s, cs, "status", hostile)
        _poison(s, cs, "description", hostile)
        mail = s.mails(cs)["bob"]
        _assert_clean(mail)
        assert "<script>" not in (mail.html or "")

    def test_in_real_names(self, world, hostile):
        s = world.scene
        s.raw(lambda session: setattr(session.get(User, s.users["alice"]), "real_name", hostile))
        s.raw(lambda session: setattr(session.get(User, s.users["bob"]), "real_name", hostile))
        mail = s.mails(s.create("alice", world.bugs, cc=["bob"]))["bob"]
        _assert_clean(mail)
        (sender,) = mail.message["From"].addresses
        assert sender.display_name.endswith("(herald)")
        assert not set('<>@,;"') & set(sender.display_name)

    def test_in_comments(self, world, hostile):
        s = world.scene
        cs = s.create("alice", world.bugs, cc=["bob"], comment="hello")
        s.raw(lambda session: setattr(session.get(Changeset, cs), "comment", hostile))
        mail = s.mails(cs)["bob"]
        _assert_clean(mail)
        assert "<script>" not in (mail.html or "")


class TestWireBytes:
    """The delivery sends bytes built without an EmailMessage per recipient: they must read the same."""

    def test_wire_mail_reads_like_the_email_package_mail(self, world: World):
        s = world.scene
        s.user("zoe", language="fr", timezone="Europe/Paris", mail_format="text")
        cs = s.create("alice", world.bugs, comment="Voilà — modifié", title="Crash é on save " + "x" * 90)
        s.follow("zoe", s.artifact_of(cs))
        s.follow("dave", s.artifact_of(cs))
        wire, reference = s.mails(cs), s.mails_via_email_package(cs)
        assert wire.keys() == reference.keys() and len(wire) >= 2
        for who, mail in wire.items():
            ref = reference[who]
            mime = {"mime-version", "content-type", "content-transfer-encoding"}
            assert [h for h in mail.header_names if h not in mime] == [
                h for h in ref.header_names if h not in mime
            ], who
            assert {h for h in mail.header_names if h in mime} >= {"mime-version", "content-type"}
            for name in ref.header_names:
                if name not in ("content-type", "content-transfer-encoding"):
                    assert str(mail.message[name]) == str(ref.message[name]), (who, name)
            assert mail.message.get_content_type() == ref.message.get_content_type()
            assert mail.text == ref.text
            assert mail.html == ref.html

    def test_wire_bytes_are_identical_on_a_retry(self, world: World):
        s = world.scene
        cs = s.create("alice", world.bugs, title="Same bytes", assigned_to="bob")
        assert {k: m.raw for k, m in s.mails(cs).items()} == {k: m.raw for k, m in s.mails(cs).items()}

    def test_boundary_comes_from_the_message_id(self, world: World):
        from herald.notify.wire import boundary_for

        s = world.scene
        cs = s.create("alice", world.bugs, title="Boundary", assigned_to="bob")
        mail = s.mails(cs)["bob"]
        assert mail.message.get_boundary() == boundary_for(str(mail.message["Message-ID"]))

    def test_every_wire_line_is_crlf_and_short(self, world: World):
        s = world.scene
        cs = s.create("alice", world.bugs, title="Lines " * 40, comment="word " * 400, assigned_to="bob")
        raw = s.mails(cs)["bob"].raw
        assert b"\n" not in raw.replace(b"\r\n", b"")
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998
