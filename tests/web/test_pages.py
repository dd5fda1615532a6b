"""Unsubscribe links, the admin pages, /metrics and /api/queue."""

from __future__ import annotations

from email.message import EmailMessage

from herald.mail import MailboxTransport
from herald.notify.unsubscribe import unsubscribe_token
from herald.tracker.models import ArtifactSubscription, SubscriptionState
from tests.web.conftest import Api


def _artifact(api: Api) -> int:
    r = api.client.post(
        f"/api/trackers/{api.world.bugs.id}/artifacts",
        json={"values": {"title": "x"}},
        headers=api.as_user("alice"),
    )
    return r.json()["id"]


def _secret(api: Api) -> str:
    return api.client.app.state.runtime.settings.secret_key


class TestUnsubscribe:
    def test_page_then_post_unsubscribes(self, api: Api):
        art = _artifact(api)
        bob = api.world.users["bob"].id
        token = unsubscribe_token(_secret(api), bob, art)
        r = api.client.get(f"/unsubscribe/{token}")
        assert r.status_code == 200 and '<form method="post">' in r.text and f"bug #{art}" in r.text
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        with api.db.session() as s:
            assert s.get(ArtifactSubscription, (art, bob)) is None  # GET changes nothing (link scanners)
        r = api.client.post(f"/unsubscribe/{token}")
        assert r.status_code == 200 and "You are unsubscribed" in r.text
        with api.db.session() as s:
            assert s.get(ArtifactSubscription, (art, bob)).state is SubscriptionState.UNSUBSCRIBED

    def test_one_click_post_as_mail_clients_send_it(self, api: Api):
        art = _artifact(api)
        carol = api.world.users["carol"].id
        r = api.client.post(
            f"/unsubscribe/{unsubscribe_token(_secret(api), carol, art)}",
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200
        with api.db.session() as s:
            assert s.get(ArtifactSubscription, (art, carol)).state is SubscriptionState.UNSUBSCRIBED

    def test_forged_or_truncated_tokens_do_nothing(self, api: Api):
        art = _artifact(api)
        bob = api.world.users["bob"].id
        token = unsubscribe_token(_secret(api), bob, art)
        forged = f"{api.world.users['carol'].id}-{art}-{token.rsplit('-', 1)[1]}"
        for bad in (forged, token[:-3], "1-1-" + "A" * 22, "<script>", "x" * 99):
            assert api.client.post(f"/unsubscribe/{bad}").status_code == 404
        assert api.client.post(f"/unsubscribe/{'x' * 200}").status_code == 422
        with api.db.session() as s:
            assert s.query(ArtifactSubscription).count() == 0


class TestAdminPages:
    def test_login_required_and_wrong_token_refused(self, api: Api):
        r = api.client.get("/admin")
        assert "Admin token" in r.text and "Dashboard" not in r.text
        r = api.client.post(
            "/admin/login",
            content=b"token=wrong",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 401

    def test_dashboard_and_mailbox(self, api: Api):
        _artifact(api)
        token = api.admin["Authorization"].split()[1]
        r = api.client.post(
            "/admin/login",
            content=f"token={token}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and token not in cookie
        r = api.client.get("/admin")
        assert "herald check: <strong>" in r.text and "Recent notifications" in r.text
        assert "HERALD" not in r.text and " | " not in r.text.split("</title>")[0]  # no Nagios line
        msg = EmailMessage()
        msg["Subject"] = "<b>hello</b>"
        msg["From"] = "a@example.org"
        msg["To"] = "b@example.org"
        msg.set_content("body text")
        box = MailboxTransport(api.client.app.state.runtime.settings)
        box.send(msg, "a@example.org", "b@example.org")
        page = api.client.get("/admin/mailbox").text
        assert "&lt;b&gt;hello&lt;/b&gt;" in page and "<b>hello</b>" not in page
        key = box.list_messages()[0].key
        assert "body text" in api.client.get("/admin/mailbox", params={"key": key}).text
        assert api.client.get("/admin/mailbox", params={"key": "../../etc/passwd"}).status_code == 404
        listed = api.client.get("/api/mailbox", headers=api.admin).json()
        assert listed["total"] == 1 and listed["messages"][0]["to"] == "b@example.org"
        assert api.client.get(f"/api/mailbox/{key}", headers=api.admin).json()["text"].strip() == "body text"
        assert api.client.get("/api/mailbox/..%2Fx", headers=api.admin).status_code in (404, 422)


def test_metrics_and_queue_stats(api: Api):
    _artifact(api)
    text = api.client.get("/metrics").text
    assert 'herald_notifications{state="pending"} 1.0' in text
    assert 'herald_up{part="database"} 1.0' in text
    assert 'herald_queue_jobs{state="ready"} 0.0' in text
    stats = api.client.get("/api/queue", headers=api.admin).json()
    assert stats["backend"] == "sql" and stats["depth"] == 0
    assert api.client.get("/api/queue", headers=api.as_user("alice")).status_code == 403


class TestArtifactPage:
    def test_public_artifact_shows_only_what_anyone_may_read(self, api: Api):
        r = api.client.post(
            f"/api/trackers/{api.world.bugs.id}/artifacts",
            json={"values": {"title": "<script>alert(1)</script>", "assigned_to": "bob",
                             "internal_notes": "root cause: secret", "security_score": 9},
                  "comment": "public words"},
            headers=api.as_user("alice"),
        )  # fmt: skip
        art = r.json()["id"]
        api.client.patch(
            f"/api/artifacts/{art}", json={"comment": "members only words", "comment_private": True},
            headers=api.as_user("alice"),
        )  # fmt: skip
        page = api.client.get(f"/artifacts/{art}")
        assert page.status_code == 200
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>" not in page.text
        assert "Bob" in page.text and "public words" in page.text
        for hidden in ("root cause: secret", "Security score", "members only words"):
            assert hidden not in page.text

    def test_private_and_unknown_artifacts_are_not_shown(self, api: Api):
        r = api.client.post(
            f"/api/trackers/{api.world.secret_bugs.id}/artifacts",
            json={"values": {"title": "Hidden plan"}},
            headers=api.as_user("carol"),
        )
        art = r.json()["id"]
        for path in (f"/artifacts/{art}", "/artifacts/99999"):
            page = api.client.get(path)
            assert page.status_code == 404 and "Hidden plan" not in page.text
