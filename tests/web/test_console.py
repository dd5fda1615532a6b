"""The admin console: sessions (server-side, revoked, expiring), CSRF, form input, actions, escaping."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from herald.mail import MailboxTransport
from herald.queue import Job
from herald.tracker.models import AdminSession, utcnow
from herald.web import console
from tests.web.conftest import Api

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Status(enum.IntEnum):
    """Stands for the check's status enum (the console reads only its names)."""

    OK = 0
    WARNING = 1
    CRITICAL = 2


def sign_in(api: Api) -> str:
    """Sign the test client in; return the page's CSRF token."""
    token = api.admin["Authorization"].split()[1]
    r = api.client.post(
        "/admin/login", content=f"token={token}".encode(), headers=FORM, follow_redirects=False
    )
    assert (r.status_code, r.headers["location"]) == (303, "/admin")
    return csrf_of(api.client.get("/admin").text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def signed_in(api: Api) -> bool:
    return "Sign out" in api.client.get("/admin").text


@dataclass
class DeadJob:
    job: Job


def dead_job(api: Api, changeset_id: int = 1, reason: str = "relay said 550") -> Job:
    queue = api.client.app.state.runtime.queue
    queue.enqueue(Job.new(changeset_id))
    claimed = queue.claim("test-worker", timeout=1)
    assert claimed is not None
    queue.dead(claimed, reason)
    return claimed


class TestSessions:
    def test_cookie_is_random_httponly_strict_and_only_a_hash_is_stored(self, api: Api):
        token = api.admin["Authorization"].split()[1]
        cookies = []
        for _ in range(2):
            r = api.client.post(
                "/admin/login", content=f"token={token}".encode(), headers=FORM, follow_redirects=False
            )
            cookies.append(r.headers["set-cookie"])
        assert cookies[0] != cookies[1]
        for cookie in cookies:
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie
            assert "Secure" not in cookie  # base_url is http here
            assert token not in cookie
        value = cookies[1].split(";")[0].split("=", 1)[1]
        with api.db.read() as s:
            hashes = s.scalars(select(AdminSession.token_hash)).all()
        assert len(hashes) == 2 and value not in hashes

    def test_sign_out_revokes_the_session_for_every_copy_of_the_cookie(self, api: Api):
        csrf = sign_in(api)
        old = dict(api.client.cookies)
        r = api.client.post(
            "/admin/logout", content=f"csrf={csrf}".encode(), headers=FORM, follow_redirects=False
        )
        assert (r.status_code, r.headers["location"]) == (303, "/admin")
        assert not signed_in(api)
        api.client.cookies.update(old)  # someone kept a copy of the cookie
        assert "Admin token" in api.client.get("/admin").text
        assert api.client.get("/admin/live.json").status_code == 401
        r = api.client.post("/admin/dead/discard", content=f"csrf={csrf}&all=1".encode(), headers=FORM)
        assert r.status_code == 401
        with api.db.read() as s:
            assert s.scalars(select(AdminSession)).all() == []

    def test_sign_out_needs_the_csrf_token(self, api: Api):
        sign_in(api)
        r = api.client.post("/admin/logout", content=b"csrf=nope", headers=FORM)
        assert r.status_code == 403
        assert signed_in(api)

    @pytest.mark.parametrize("column", ["expires_at", "last_seen_at"])
    def test_expired_or_idle_sessions_are_refused(self, api: Api, column: str):
        sign_in(api)
        settings = api.client.app.state.runtime.settings
        past = utcnow() - timedelta(seconds=settings.admin_session_idle_seconds + 1)
        with api.db.session() as s:
            s.execute(update(AdminSession).values({column: past}))
        assert not signed_in(api)
        assert api.client.get("/admin/live.json").status_code == 401

    def test_a_new_sign_in_clears_sessions_that_ran_out(self, api: Api):
        sign_in(api)
        with api.db.session() as s:
            s.execute(update(AdminSession).values(expires_at=utcnow() - timedelta(seconds=1)))
        sign_in(api)
        with api.db.read() as s:
            assert len(s.scalars(select(AdminSession)).all()) == 1

    def test_garbage_cookies_are_refused(self, api: Api):
        for value in ("x", "A" * 500, "%00%ff"):
            api.client.cookies.set("herald_admin", value, path="/admin")
            assert not signed_in(api)


class TestActions:
    def test_csrf_missing_or_wrong_is_403_and_changes_nothing(self, api: Api):
        job = dead_job(api)
        good = sign_in(api)
        for body in (f"job_id={job.id}", f"job_id={job.id}&csrf=", f"job_id={job.id}&csrf={good[:-1]}x"):
            for action in ("retry", "discard"):
                r = api.client.post(f"/admin/dead/{action}", content=body.encode(), headers=FORM)
                assert r.status_code == 403, (action, body)
        assert [d.job_id for d in api.client.app.state.runtime.queue.dead_letters()] == [job.id]

    def test_csrf_of_another_session_is_refused(self, api: Api):
        job = dead_job(api)
        theirs = sign_in(api)
        api.client.cookies.clear()
        sign_in(api)
        r = api.client.post(
            "/admin/dead/discard", content=f"job_id={job.id}&csrf={theirs}".encode(), headers=FORM
        )
        assert r.status_code == 403

    def test_non_admins_cannot_act(self, api: Api):
        job = dead_job(api)
        for headers in ({}, api.as_user("alice"), api.admin):  # a bearer token is not a console session
            r = api.client.post(
                "/admin/dead/discard", content=f"job_id={job.id}".encode(), headers={**FORM, **headers}
            )
            assert r.status_code == 401
        assert len(api.client.app.state.runtime.queue.dead_letters()) == 1

    @pytest.mark.parametrize(
        ("body", "status"),
        [
            ("job_id=../../etc", 400),
            ("job_id=entry-0/../1-0", 400),
            ("job_id=a%20b", 400),
            ("job_id=", 400),
            ("", 400),
            ("all=2", 400),
            ("job_id=a&job_id=b", 400),
            ("back=-1&all=1", 400),
            ("back=%C2%B2&all=1", 400),
            ("%zz=&&&=", 400),
        ],
    )
    def test_malformed_forms_get_a_clear_4xx(self, api: Api, body: str, status: int):
        csrf = sign_in(api)
        payload = (f"csrf={csrf}&" + body).encode() if body else f"csrf={csrf}".encode()
        r = api.client.post("/admin/dead/retry", content=payload, headers=FORM)
        assert r.status_code == status
        assert r.json()["error"]["message"]

    def test_binary_and_oversized_forms(self, api: Api):
        csrf = sign_in(api)
        r = api.client.post(
            "/admin/dead/retry", content=b"csrf=" + csrf.encode() + b"&x=\xff\xfe", headers=FORM
        )
        assert r.status_code == 400
        r = api.client.post("/admin/dead/retry", content=b"csrf=" + b"a" * 10_000, headers=FORM)
        assert r.status_code == 413

    def test_retry_and_discard_one_then_all(self, api: Api):
        queue = api.client.app.state.runtime.queue
        first, second, third = (dead_job(api, n) for n in (1, 2, 3))
        csrf = sign_in(api)
        page = api.client.get("/admin").text
        assert first.id in page and "relay said 550" in page and 'href="/admin/changesets/1"' in page
        r = api.client.post(
            "/admin/dead/retry",
            content=f"csrf={csrf}&job_id={first.id}".encode(),
            headers=FORM,
            follow_redirects=False,
        )
        assert (r.status_code, r.headers["location"]) == (303, "/admin?note=retried&n=1#dead")
        assert "1 dead letter(s) put back in line." in api.client.get(r.headers["location"]).text
        assert queue.stats().depth == 1
        r = api.client.post(
            "/admin/dead/discard", content=f"csrf={csrf}&job_id={second.id}".encode(), headers=FORM
        )
        assert r.status_code == 200 and "1 dead letter(s) discarded." in r.text
        assert [d.job_id for d in queue.dead_letters()] == [third.id]
        r = api.client.post(
            "/admin/dead/retry", content=f"csrf={csrf}&job_id={second.id}".encode(), headers=FORM
        )
        assert "Nothing was retried" in r.text
        r = api.client.post("/admin/dead/discard", content=f"csrf={csrf}&all=1".encode(), headers=FORM)
        assert "1 dead letter(s) discarded." in r.text and queue.dead_letters() == []

    def test_the_changeset_page_lists_its_dead_job_and_comes_back_to_itself(self, api: Api):
        r = api.client.post(
            f"/api/trackers/{api.world.bugs.id}/artifacts",
            json={"values": {"title": "x"}},
            headers=api.as_user("alice"),
        )
        cs = r.json()["changeset_id"]
        job = dead_job(api, cs, reason="<script>alert('reason')</script>")
        csrf = sign_in(api)
        page = api.client.get(f"/admin/changesets/{cs}")
        assert page.status_code == 200 and job.id in page.text
        assert "<script>alert" not in page.text and "&lt;script&gt;alert(" in page.text
        r = api.client.post(
            "/admin/dead/retry",
            content=f"csrf={csrf}&job_id={job.id}&back={cs}".encode(),
            headers=FORM,
            follow_redirects=False,
        )
        assert r.headers["location"] == f"/admin/changesets/{cs}?note=retried&n=1"


class TestPages:
    def test_pages_need_a_session(self, api: Api):
        for path in ("/admin", "/admin/changesets/1", "/admin/mailbox", "/admin/changesets?id=1"):
            r = api.client.get(path)
            assert "Admin token" in r.text and "Sign out" not in r.text, path

    def test_changeset_lookup(self, api: Api):
        sign_in(api)
        r = api.client.get("/admin/changesets", params={"id": " 12"}, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, "/admin/changesets/12")
        for bad in ("abc", "0", "-3", "9" * 30, "", "\u00b2", "\u0663", "1e3"):
            assert api.client.get("/admin/changesets", params={"id": bad}).status_code == 400, bad
        assert api.client.get("/admin/changesets/99999").status_code == 404
        assert api.client.get("/admin/changesets/abc").status_code == 422

    def test_dashboard_scripts_csp_and_live_json(self, api: Api):
        sign_in(api)
        r = api.client.get("/admin")
        csp = r.headers["content-security-policy"]
        assert (
            "script-src 'self'" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        )
        assert '<script src="/admin/static/console.js"' in r.text
        js = api.client.get("/admin/static/console.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        data = api.client.get("/admin/live.json").json()
        assert len(data["minutes"]) == 60 and data["queue"]["depth"] == 0 and data["at"].endswith(" UTC")
        assert {"unfinished", "oldest_unfinished_age", "states"} <= data["outbox"].keys()

    def test_a_subject_or_mail_html_with_script_is_never_live_in_the_page(self, api: Api):
        sign_in(api)
        msg = EmailMessage()
        msg["Subject"] = "<script>alert('subject')</script>"
        msg["From"] = "a@example.org"
        msg["To"] = "b@example.org"
        msg.set_content("plain words")
        msg.add_alternative(
            '<p>rich <b>words</b></p><script>alert("html")</script><img src=x onerror=alert(1)>',
            subtype="html",
        )
        box = MailboxTransport(api.client.app.state.runtime.settings)
        box.send(msg, "a@example.org", "b@example.org")
        listing = api.client.get("/admin/mailbox").text
        assert "<script>alert('subject')" not in listing and "&lt;script&gt;" in listing
        key = box.list_messages()[0].key
        page = api.client.get("/admin/mailbox", params={"key": key}).text
        assert "plain words" in page
        frame = re.search(r"<iframe[^>]*>", page)
        assert frame is not None
        assert 'sandbox=""' in frame.group(0) and "srcdoc=" in frame.group(0)
        # The HTML is only inside the (escaped) srcdoc attribute, never markup of the page itself.
        assert "<script>alert(" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(&#34;html&#34;)&lt;/script&gt;" in page

    def test_times_carry_date_and_zone(self):
        assert console.when(0) == "1970-01-01 00:00:00 UTC"
        assert console.when(float("nan")) == "?" and console.when(1e300) == "?" and console.when(None) == ""
        assert console.age(5) == "5.0 s" and console.age(7200) == "2 h 0 min" and console.age(-1) == "?"


class TestVerdict:
    def _runtime(self, report: object) -> SimpleNamespace:
        return SimpleNamespace(settings=None, db=None, queue=None, live_workers=None, report=report)

    def test_plain_words_without_perfdata(self, monkeypatch: pytest.MonkeyPatch):
        report = SimpleNamespace(
            status=Status.WARNING,
            findings=[(Status.WARNING, "2 job(s) in the queue's dead letters: see herald queue dead")],
            perfdata={"queue_dead": 2},
            summary=lambda: "HERALD WARNING - 2 job(s) | queue_dead=2",
        )
        monkeypatch.setattr(console, "run_check", lambda *a: report)
        v = console.verdict(self._runtime(report))  # type: ignore[arg-type]
        assert v.status == "WARNING" and v.headline.startswith("2 job(s)") and "|" not in v.headline
        assert v.title == "Needs attention — herald"

    def test_the_checks_own_headline_and_order_win(self, monkeypatch: pytest.MonkeyPatch):
        report = SimpleNamespace(
            status=Status.CRITICAL,
            findings=[],
            sorted_findings=lambda: [{"status": "CRITICAL", "code": "no-worker", "message": "no worker"}],
            headline=lambda: "no worker (+1 more)",
        )
        monkeypatch.setattr(console, "run_check", lambda *a: report)
        v = console.verdict(self._runtime(report))  # type: ignore[arg-type]
        assert v.headline == "No worker (+1 more)" and [f.anchor for f in v.findings] == ["check-no-worker"]

    def test_findings_in_any_shape(self, monkeypatch: pytest.MonkeyPatch):
        class Richer:
            status = Status.CRITICAL
            findings = [
                SimpleNamespace(
                    status=Status.CRITICAL, message="no worker", next_step="herald workers", id="no_worker"
                ),
                {"status": "WARNING", "message": "relay slow", "next": "read worker.log", "id": "relay-4xx"},
                (Status.OK, "queue reachable"),
            ]

        monkeypatch.setattr(console, "run_check", lambda *a: Richer())
        v = console.verdict(self._runtime(None))  # type: ignore[arg-type]
        assert v.headline == "No worker"
        assert [(f.status, f.next_step, f.anchor) for f in v.findings] == [
            ("CRITICAL", "herald workers", "check-no-worker"),
            ("WARNING", "read worker.log", "check-relay-4xx"),
        ]  # OK findings are not listed under the verdict

    def test_a_failing_check_still_opens_the_console(self, monkeypatch: pytest.MonkeyPatch):
        def boom(*a: object) -> None:
            raise RuntimeError("x")

        monkeypatch.setattr(console, "run_check", boom)
        assert console.verdict(self._runtime(None)).status == "UNKNOWN"  # type: ignore[arg-type]


def test_rotating_the_admin_token_ends_every_session(api: Api):
    import dataclasses

    sign_in(api)
    runtime = api.client.app.state.runtime
    runtime.settings = dataclasses.replace(runtime.settings, admin_token="r" * 40)
    assert not signed_in(api)


def test_workers_grouped_by_host_with_their_jobs_and_the_relay(api: Api):
    from herald.tracker.models import WorkerHeartbeat

    now = utcnow()
    beat = {"started_at": now, "beat_at": now, "expires_at": now + timedelta(seconds=60)}
    with api.db.session() as s:
        s.add_all(
            [
                WorkerHeartbeat(
                    name="web-1:supervisor", kind="supervisor", pid=10, host="web-1", info={}, **beat
                ),
                WorkerHeartbeat(
                    name="web-1:worker-1",
                    kind="worker",
                    pid=11,
                    host="web-1",
                    info={
                        "state": "relay_down",
                        "slots": 32,
                        "busy": 1,
                        "jobs": [{"job_id": "a" * 32, "changeset_id": 42, "since": now.timestamp() - 5}],
                        "relay": {"up": False, "since": 0, "last_error": "<script>x</script> refused"},
                        "done": 7,
                        "failed": 1,
                    },
                    **beat,
                ),
                WorkerHeartbeat(
                    name="web-2:worker-1", kind="worker", pid=12, host="web-2", info=["junk"], **beat
                ),
                WorkerHeartbeat(
                    name="gone:worker-1",
                    kind="worker",
                    pid=13,
                    host="gone",
                    info={},
                    started_at=now,
                    beat_at=now - timedelta(minutes=5),
                    expires_at=now - timedelta(minutes=4),
                ),
            ]
        )
    sign_in(api)
    page = api.client.get("/admin").text
    assert "<h3>web-1</h3>" in page and "<h3>web-2</h3>" in page and "<h3>gone</h3>" not in page
    assert 'href="/admin/changesets/42">changeset 42</a>' in page and "1 / 32" in page and "7 / 1" in page
    assert "relay_down" in page and "<script>x</script>" not in page
    assert "built-in mailbox" in page  # no smtp_host here
    runtime = api.client.app.state.runtime
    relay = console.relay_state(
        SimpleNamespace(settings=SimpleNamespace(smtp_host="mx.example.org", smtp_port=587)),  # type: ignore[arg-type]
        console.workers(runtime),
    )
    assert (relay.target, relay.state) == ("mx.example.org:587", "down")
    assert (
        relay.detail
        == "down since 1970-01-01 00:00:00 UTC: <script>x</script> refused (seen by 1 of 1 workers)"
    )


def test_the_hour_cache_keeps_closed_minutes_only(sqlite_db):
    from herald.outbox import MinuteFigures

    cache = console.MinuteCache()
    now = utcnow()
    with sqlite_db.read() as s:
        first = cache.hour(s, now)
        assert (
            len(first) == 60 and len(cache._closed) == 57
        )  # the current minute and the two before may change
        cache._closed[first[0].minute] = MinuteFigures(first[0].minute, 99, 1.0, 2.0)
        again = cache.hour(s, now)
    assert len(again) == 60 and again[0].sent == 99  # read from the cache, not the ledger
    assert [m.minute for m in again] == [m.minute for m in first]


def test_the_cookie_is_secure_behind_https(tmp_path):
    from fastapi.testclient import TestClient

    from herald.config import ensure_secrets, load_settings
    from herald.tracker.db import Database
    from herald.tracker.schema import upgrade
    from herald.web import create_app

    settings = ensure_secrets(
        load_settings(env={"HERALD_DATA_DIR": str(tmp_path), "HERALD_BASE_URL": "https://herald.example.org"})
    )
    db = Database(settings.database_url)
    upgrade(db.engine)
    try:
        with TestClient(create_app(settings), base_url="https://herald.example.org") as client:
            r = client.post("/admin/login", data={"token": settings.admin_token}, follow_redirects=False)
            assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]
            assert f"Max-Age={int(settings.admin_session_seconds)}" in r.headers["set-cookie"]
            assert "Sign out" in client.get("/admin").text
    finally:
        db.dispose()
