"""``herald test-send``: one mail through the outbox, the queue, a live worker and the relay, each hop
timed; or the hop where it stopped and why. Real processes, redis-server, aiosmtpd."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from sqlalchemy import select

from herald.outbox import Notification
from herald.tracker.models import Project, User
from tests.e2e.conftest import Stack
from tests.support.smtp import HANG


def test_send(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    return subprocess.run(
        [sys.executable, "-m", "herald", "test-send", *args],
        env={**clean, **stack.env, **env},
        capture_output=True,
        text=True,
        timeout=90,
    )


test_send.__test__ = False  # a helper, not a test


def test_a_test_mail_goes_through_every_hop(make_stack: Callable[..., Stack]):
    stack = make_stack()
    stack.start_workers()
    stack.wait_workers(2)
    r = test_send(stack, "frank@example.org")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "path: async (async_emails = all): outbox -> queue -> worker -> smtp" in lines
    hops = [line.split()[0] for line in lines if line.startswith("  ")]
    assert hops == ["outbox", "queue", "worker", "smtp"], lines
    # Which worker, when the row still names it (a run that finished between two polls has let go).
    assert any("claimed by worker-" in line or "claimed by a worker" in line for line in lines), lines
    assert lines[-1].startswith("sent to frank@example.org in ")
    (mail,) = stack.smtp.wait_for(1)
    assert mail.rcpt_tos == ("frank@example.org",)
    assert "herald test mail" in str(mail.message()["Subject"])
    # The change lives in the system project; an address of an existing user reuses that user.
    with stack.db.read() as s:
        assert s.scalar(select(Project.public).where(Project.name == "herald-test-send")) is False
    r = test_send(stack, "bob@example.org")
    assert r.returncode == 0, r.stdout
    with stack.db.read() as s:
        assert s.scalar(select(User.username).where(User.email == "bob@example.org")) == "bob"
    print("\n" + r.stdout)


def test_inline_mode_is_said_and_tested(make_stack: Callable[..., Stack]):
    stack = make_stack(HERALD_ASYNC_EMAILS="false")
    r = test_send(stack, "frank@example.org")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "path: inline (async_emails = false" in r.stdout
    assert [line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")] == ["outbox", "smtp"]
    stack.smtp.wait_for(1)


def test_no_worker_alive_stops_before_anything_is_written(make_stack: Callable[..., Stack]):
    stack = make_stack()
    r = test_send(stack, "frank@example.org")
    assert r.returncode == 1
    assert "stopped at worker: no backend worker is alive (0 of 2)" in r.stdout
    with stack.db.read() as s:
        assert s.scalar(select(Notification.changeset_id)) is None


def test_queue_down_is_the_hop_that_stops(make_stack: Callable[..., Stack]):
    stack = make_stack()
    stack.redis.stop()
    try:
        r = test_send(stack, "frank@example.org")
    finally:
        stack.redis.start()
    assert r.returncode == 1
    assert "stopped at queue: unreachable (" in r.stdout


def test_a_refusal_is_shown_with_the_relay_reply(make_stack: Callable[..., Stack]):
    stack = make_stack()
    stack.start_workers()
    stack.wait_workers(2)
    stack.smtp.refuse_recipient("frank@example.org", "550 5.1.1 <{address}>: no such user here")
    r = test_send(stack, "frank@example.org")
    assert r.returncode == 1
    assert (
        "stopped at smtp: the relay refused the mail for good: 550 5.1.1 <frank@example.org>: no such user"
        in r.stdout
    )
    stack.smtp.refuse_recipient("gina@example.org", "451 4.7.1 greylisted, come back later")
    r = test_send(stack, "gina@example.org")
    assert r.returncode == 1
    assert "stopped at smtp: the relay deferred the mail (451 4.7.1 greylisted" in r.stdout


def test_a_dead_relay_is_named(make_stack: Callable[..., Stack]):
    stack = make_stack(HERALD_NB_BACKEND_WORKERS="1")
    stack.start_workers()
    stack.wait_workers(1)
    stack.smtp.go_down()
    try:
        r = test_send(stack, "frank@example.org", "--timeout", "20")
    finally:
        stack.smtp.come_back()
    assert r.returncode == 1
    assert "stopped at smtp: the relay is unusable (cannot reach SMTP server" in r.stdout, r.stdout


def test_a_relay_that_never_answers_times_out_at_the_smtp_hop(make_stack: Callable[..., Stack]):
    stack = make_stack(HERALD_SMTP_TIMEOUT="30")
    stack.start_workers()
    stack.wait_workers(2)
    stack.smtp.script_data(HANG)
    r = test_send(stack, "frank@example.org", "--timeout", "3")
    assert r.returncode == 1
    assert "stopped at smtp: nothing happened within 3 s (the notification is running)" in r.stdout


def test_malformed_addresses_are_refused(make_stack: Callable[..., Stack]):
    stack = make_stack()
    for bad in ("not-an-address", "a@b.c\r\nBcc: x@y.z", "two@x.org, three@y.org"):
        r = test_send(stack, bad)
        assert r.returncode == 1 and "test-send: ADDRESS" in r.stderr, (bad, r.stderr)


def test_inline_mode_with_the_relay_down_says_so_at_once(make_stack: Callable[..., Stack]):
    stack = make_stack(HERALD_ASYNC_EMAILS="false")
    stack.smtp.go_down()
    try:
        r = test_send(stack, "frank@example.org")
    finally:
        stack.smtp.come_back()
    assert r.returncode == 1
    assert (
        "stopped at smtp: the inline delivery did not send it (the notification is retrying: relay: "
        in r.stdout
    )
    assert "cannot reach SMTP server" in r.stdout
