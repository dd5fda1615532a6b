"""The admin console in a real headless browser (Playwright driving Debian's chromium) against a real
herald: the web app served by uvicorn on a free port, ``herald workers`` as subprocesses, the tests' own
redis-server and aiosmtpd.

An admin signs in, sees a malformed job and a real changeset's job in the dead letters, discards the one
and retries the other, sees that changeset delivered, signs out, and the old cookie is refused.
Screenshots go to the test's tmp directory (``HERALD_SCREENSHOTS`` names another directory), never the repo.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from herald.config import Settings
from herald.queue.keys import JOB_FIELD, RedisKeys
from herald.queue.redis_backend import RedisQueue
from herald.web import create_app
from tests.e2e.conftest import RECIPIENTS, Stack, wait_until
from tests.support.services import service_missing

CHROMIUM = os.environ.get("HERALD_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 20_000


@pytest.fixture
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_missing("playwright is not installed (pip install -e '.[test]')")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        service_missing(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


class Served:
    """The stack's app served over real HTTP (uvicorn in a thread, on a socket bound to a free port)."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(settings), log_level="warning", ws="none", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, "uvicorn to start")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def served(make_stack: Callable[..., Stack]) -> Iterator[tuple[Stack, Served]]:
    # One worker; a job claimed twice without a verdict dies (how a real changeset gets dead-lettered).
    stack = make_stack(HERALD_NB_BACKEND_WORKERS="1", HERALD_JOB_MAX_ATTEMPTS="1")
    served = Served(stack.settings)
    try:
        yield stack, served
    finally:
        served.close()


def shots_dir(tmp_path: Path) -> Path:
    path = Path(os.environ.get("HERALD_SCREENSHOTS") or tmp_path / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_console_in_a_browser(browser, served, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    stack, site = served
    shots = shots_dir(tmp_path)

    # A real changeset whose job dies: someone claims it and vanishes (released, no verdict), so the
    # worker's claim is one too many (job_max_attempts = 1). And a malformed payload pushed by hand.
    cs = stack.create()["changeset_id"]
    ghost = RedisQueue(stack.settings)
    try:
        assert ghost.claim("ghost", timeout=2) is not None
        assert ghost.release("ghost") == 1
    finally:
        ghost.close()
    client = stack.redis.client()
    try:
        client.xadd(
            RedisKeys(stack.settings.redis_namespace, stack.settings.queue_shards).shard(0).stream,
            {JOB_FIELD: b'{"v": 1, "id": "<script>"}'},
        )
    finally:
        client.close()
    assert stack.smtp.messages == []
    stack.start_workers()

    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Sign in.
    page.goto(f"{site.url}/admin")
    page.fill("input[name=token]", stack.settings.admin_token or "")
    page.click("button[type=submit]")
    page.wait_for_selector("#sign-out")
    assert "herald check:" in page.inner_text("#verdict")
    assert "HERALD" not in page.title() and "|" not in page.title()

    # The counters update without a reload: the dead count reaches 2 once the worker has judged both.
    page.wait_for_selector("#live[data-polls]")
    # (A locator, not wait_for_function: the console's CSP forbids the eval that one needs.)
    expect(page.locator('td[data-live="queue-dead"]')).to_have_text("2", timeout=30_000)
    assert page.locator("#chart-hour rect").count() > 60  # frame + 60 minute bars
    page.reload()
    letters = page.locator("#dead-letters")
    assert "malformed" in letters.inner_text() and "too many attempts" in letters.inner_text().lower()
    assert page.locator("#dead-letters a", has_text=str(cs)).count() == 1
    # The worker is listed under its host, and the relay as it sees it.
    assert "worker" in page.inner_text("h2:has-text('Workers') + h3 + table")
    page.screenshot(path=str(shots / "console-dead.png"), full_page=True)

    # Discard the malformed one: it has no Retry button (it would only die again).
    malformed = page.locator("#dead-letters tr", has_text="malformed")
    assert malformed.locator("[data-action=retry]").count() == 0
    malformed.locator("[data-action=discard]").click()
    page.wait_for_selector("#note:has-text('1 dead letter(s) discarded')")
    assert page.locator("#dead-letters tr").count() == 2  # header + the changeset's job

    # Open the changeset from the list, retry it there, and see it delivered.
    page.click(f"#dead-letters a:has-text('{cs}')")
    page.wait_for_selector("#deliveries")
    assert page.url.endswith(f"/admin/changesets/{cs}")
    page.click("[data-action=retry]")
    page.wait_for_selector("#note:has-text('put back in line')")
    wait_until(
        lambda: {r for m in stack.smtp.messages for r in m.rcpt_tos} >= set(RECIPIENTS),
        f"changeset {cs} delivered",
    )
    wait_until(lambda: page.reload() and page.inner_text("#cs-state") == "done", "the page to say done")
    rows = page.inner_text("#deliveries")
    for address in RECIPIENTS:
        assert address in rows
    assert rows.count("sent") >= 3 and "250" in rows  # the SMTP reply of each recipient
    page.screenshot(path=str(shots / "console-changeset.png"), full_page=True)

    # Back on the dashboard: the hour chart counts the three mails, and the dead letters are gone.
    page.goto(f"{site.url}/admin")
    expect(page.locator('td[data-live="sent-hour"]')).to_have_text("3")
    expect(page.locator("#chart-hour")).to_contain_text("max 3/min")
    assert page.locator("#dead-letters").count() == 0
    page.screenshot(path=str(shots / "console-after.png"), full_page=True)

    # Sign out; the old cookie no longer opens anything.
    cookie = next(c for c in page.context.cookies() if c["name"] == "herald_admin")
    page.click("#sign-out")
    page.wait_for_selector("input[name=token]")
    with httpx.Client(base_url=site.url, cookies={"herald_admin": cookie["value"]}) as http:
        assert http.get("/admin/live.json").status_code == 401
        assert "Admin token" in http.get("/admin").text
        r = http.post("/admin/dead/discard", data={"all": "1"})
        assert r.status_code == 401
    assert errors == []


def test_mailbox_html_is_shown_sandboxed_and_its_script_never_runs(browser, tmp_path: Path) -> None:
    """The built-in mailbox (no SMTP server): a mail's HTML part renders in its frame, its script does not
    run there nor in the console, and the text part is shown beside it."""
    from email.message import EmailMessage

    from playwright.sync_api import expect

    from herald.config import ensure_secrets, load_settings
    from herald.mail import MailboxTransport
    from tests.support.tracker import make_database

    settings = ensure_secrets(load_settings(env={"HERALD_DATA_DIR": str(tmp_path / "var")}))
    make_database(settings.database_url).dispose()
    msg = EmailMessage()
    msg["Subject"] = "<script>document.title='pwned-subject'</script>Crash on save"
    msg["From"] = "herald@example.org"
    msg["To"] = "bob@example.org"
    msg.set_content("plain words of the mail")
    msg.add_alternative(
        "<p id=rich>rich <b>words</b></p>"
        "<script>parent.document.title='pwned';document.body.append('ran')</script>"
        "<img src=x onerror=\"parent.document.title='pwned-img'\">",
        subtype="html",
    )
    MailboxTransport(settings).send(msg, "herald@example.org", "bob@example.org")

    site = Served(settings)
    try:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{site.url}/admin")
        page.fill("input[name=token]", settings.admin_token or "")
        page.click("button[type=submit]")
        page.wait_for_selector("#sign-out")
        page.click("text=Mailbox")
        page.click("a:has-text('Crash on save')")
        frame = page.frame_locator("#mail-html")
        expect(frame.locator("#rich")).to_have_text("rich words")
        expect(page.locator("#mail-text")).to_contain_text("plain words of the mail")
        assert "ran" not in frame.locator("body").inner_text()
        assert "pwned" not in page.title() and dialogs == []
        assert page.locator("h1").inner_text().startswith("<script>")  # shown as text, not run
        page.screenshot(path=str(shots_dir(tmp_path) / "console-mailbox.png"), full_page=True)
    finally:
        site.close()
