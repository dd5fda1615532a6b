"""The logs of a real installation (the web app in-process, ``herald workers`` as real processes, Redis with a
password, aiosmtpd requiring AUTH): JSON lines that parse, one grep on a changeset id that follows it from
the request to each SMTP reply, each event written once, and no secret anywhere, not even the wrong
password of a failed login."""

from __future__ import annotations

import json
import logging
import secrets
from collections import Counter
from pathlib import Path

import pytest

from herald.cli.logs import setup_logging
from tests.e2e.conftest import Stack, wait_until
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.slow

SMTP_USER = "herald-relay"
SMTP_PASSWORD = "smtp-" + secrets.token_hex(16)
WRONG_PASSWORD = "wrong-" + secrets.token_hex(16)
DAVE = "dave@example.org"


@pytest.fixture
def smtp_server(make_smtp_server) -> SmtpServer:
    """This module's relay requires AUTH (make_stack uses it)."""
    return make_smtp_server(auth=(SMTP_USER, SMTP_PASSWORD))


@pytest.fixture
def front_end_logging():
    """The in-process web app logs through setup_logging, as ``herald serve`` does; undone afterwards."""
    root = logging.getLogger("herald")
    saved = (list(root.handlers), root.level, root.propagate)

    def install(stack: Stack) -> None:
        setup_logging(stack.settings, "herald.log")

    yield install
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(saved[1])
    root.propagate = saved[2]


def json_lines(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    for entry in parsed:
        assert {"ts", "level", "logger", "message"} <= entry.keys(), entry
        assert entry["ts"].endswith("Z") and "T" in entry["ts"]
    return parsed


def test_json_logs_follow_one_change_write_each_event_once_and_keep_no_secret(make_stack, front_end_logging):
    stack: Stack = make_stack(
        HERALD_LOG_FORMAT="json", HERALD_SMTP_USER=SMTP_USER, HERALD_SMTP_PASSWORD=SMTP_PASSWORD
    )
    front_end_logging(stack)
    stack.smtp.refuse_recipient(DAVE)

    # A login refused: the workers log it (the relay is unusable), never the password they tried.
    refused = stack.start_workers(HERALD_SMTP_PASSWORD=WRONG_PASSWORD)
    stack.wait_workers(2)
    first = stack.create()["changeset_id"]
    wait_until(lambda: "relay unusable" in stack.log(), "the refused login in worker.log")
    assert stack.stop_workers(refused) == 0

    workers = stack.start_workers()
    stack.wait_workers(2)
    second = stack.update(stack.artifacts[0])["changeset_id"]
    expected = 2 * len(stack.changesets)  # bob and carol; dave is refused for good
    wait_until(lambda: len({str(m.message()["Message-ID"]) for m in stack.smtp.messages}) >= expected, "mail")
    wait_until(stack.all_done, "every notification done")
    assert stack.stop_workers(workers) == 0

    log_dir = stack.settings.log_dir
    front, back = json_lines(log_dir / "herald.log"), json_lines(log_dir / "worker.log")
    everything = front + back

    # One grep on the id follows the change: queued by the request, received, started, each recipient's
    # SMTP reply, the end, the job settled.
    trail = [e for e in everything if e.get("changeset_id") == second]
    messages = [e["message"] for e in trail]
    assert any(m.startswith(f"Notification: changeset_id={second} queued job_id=") for m in messages)
    assert any(" job received " in m for m in messages)
    assert any(m.startswith(f"Notification: Start notification changeset_id={second} ") for m in messages)
    replies = {e["recipient"]: e["reply"] for e in trail if e["message"].startswith("Notification: sent ")}
    assert set(replies) == {"bob@example.org", "carol@example.org"}
    assert all(r.startswith("250") for r in replies.values()), replies
    (failed,) = [e for e in trail if "delivery failed" in e["message"]]
    assert failed["recipient"] == DAVE and failed["reply"].startswith("550")
    assert any(m.startswith(f"Notification: End notification changeset_id={second} ") for m in messages)
    assert any(" job processed " in m for m in messages)
    assert all(isinstance(e["changeset_id"], int) for e in trail)

    # Each event once: one queued line per change, one "sent" line per mail the server received.
    queued = Counter(e["changeset_id"] for e in front if " queued job_id=" in e["message"])
    assert queued == {first: 1, second: 1}
    sent = Counter(
        (e["changeset_id"], e["recipient"]) for e in back if e["message"].startswith("Notification: sent ")
    )
    assert len(sent) == expected and set(sent.values()) == {1}
    # ...and in one place: nothing of it went to the processes' stderr as well.
    outputs = "".join(p.read_text(errors="replace") for p in stack.tmp_path.glob("supervisor-*.out"))
    assert "changeset_id" not in outputs and '"logger"' not in outputs, outputs[:2000]

    # No secret in any log or output, the refused password included.
    texts = {p.name: p.read_text(errors="replace") for p in [*log_dir.glob("*.log*")]}
    texts["supervisor output"] = outputs
    for secret in (
        SMTP_PASSWORD,
        WRONG_PASSWORD,
        stack.redis.password,
        stack.settings.admin_token,
        stack.settings.secret_key,
    ):
        assert secret and len(secret) >= 16
        leaks = [name for name, text in texts.items() if secret in text]
        assert not leaks, f"a secret appears in {leaks}"
