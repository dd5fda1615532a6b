"""`herald up --demo` on a bare directory: the README's promise, run as a real process over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.support.services import free_port
from tests.support.waiting import wait_until


@pytest.fixture
def herald_up(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env["HERALD_DATA_DIR"] = str(tmp_path / "var")
    proc = subprocess.Popen(
        [sys.executable, "-m", "herald", "up", "--demo", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def healthy():
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode())
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, "herald up to answer /healthz", timeout=30)
    yield proc, base, tmp_path / "var"
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_up_demo_serves_notifies_inline_and_stops_cleanly(herald_up):
    proc, base, var = herald_up
    admin = {"Authorization": f"Bearer {(var / 'admin_token').read_text().strip()}"}
    tokens = json.loads((var / "demo-tokens.json").read_text())
    alice = {"Authorization": f"Bearer {tokens['alice']}"}

    r = httpx.patch(
        f"{base}/api/artifacts/1",
        headers=alice,
        json={"values": {"status": "In progress"}, "comment": "On it. @carol please retest."},
    )
    assert r.status_code == 200, r.text
    changeset = r.json()["changeset_id"]
    assert r.json()["notification"]["mode"] == "inline"

    status = httpx.get(f"{base}/api/changesets/{changeset}/notification", headers=admin).json()
    assert status["state"] == "done"  # inline: delivered before the answer
    assert {d["address"]: d["status"] for d in status["deliveries"]} == {
        "bob@example.org": "sent",
        "carol@example.org": "sent",
    }

    mails = httpx.get(f"{base}/api/mailbox", headers=admin, params={"recipient": "bob@example.org"}).json()
    subjects = {m["subject"] for m in mails["messages"]}
    assert "[bug #1] Saving a draft loses the attachments" in subjects

    # The seeded creation (committed before the server started) reaches its recipients through the relay.
    wait_until(
        lambda: httpx.get(f"{base}/api/changesets/1/notification", headers=admin).json()["state"] == "done",
        "the seeded changeset to be delivered",
        timeout=20,
    )

    log = (var / "log" / "herald.log").read_text()
    assert (
        f"Notification: Start notification changeset_id={changeset} artifact_id=1 recipients=2 mode=inline"
        in log
    )
    assert f"Notification: End notification changeset_id={changeset} artifact_id=1 recipients=2 sent=2" in log

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0


def test_up_warns_in_one_line_when_the_smtp_relay_is_unusable(tmp_path: Path, closed_port: int):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(
        HERALD_DATA_DIR=str(tmp_path / "var"),
        HERALD_SMTP_HOST="127.0.0.1",
        HERALD_SMTP_PORT=str(closed_port),
        HERALD_SMTP_TIMEOUT="2",
        HERALD_NB_BACKEND_WORKERS="0",
    )
    out = tmp_path / "up.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "herald", "up", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        line = wait_until(
            lambda: next(
                (x for x in out.read_text().splitlines() if x.startswith("WARNING: SMTP relay")), None
            ),
            "the SMTP warning",
            timeout=30,
        )
        assert line.startswith(f"WARNING: SMTP relay 127.0.0.1:{closed_port} is unusable (")
        assert "herald test-send ADDRESS" in line
        log = tmp_path / "var" / "log" / "herald.log"
        wait_until(lambda: "SMTP relay" in log.read_text(), "the warning in herald.log")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
