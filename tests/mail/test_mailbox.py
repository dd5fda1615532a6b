"""The built-in Maildir mailbox: storing, reading back, concurrent writers, key validation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from datetime import datetime
from pathlib import Path

import pytest

from herald.config import load_settings
from herald.mail import MailboxTransport, PermanentMailError, TransientMailError
from tests.mail.messages import SENDER, build_message


@pytest.fixture
def settings(tmp_path):
    return load_settings(env={"HERALD_DATA_DIR": str(tmp_path / "data")})


@pytest.fixture
def box(settings):
    with MailboxTransport(settings) as box:
        yield box


def test_stored_message_reads_back_with_its_envelope(box, settings):
    message = build_message(to="alice@example.org", subject="Crash on save", Cc="carol@example.org")

    receipt = box.send(message, SENDER, "bob@example.org")

    assert box.path == settings.mailbox_dir
    assert (settings.mailbox_dir / "new").is_dir()
    assert receipt.code == 250
    assert receipt.message_id == message["Message-ID"]
    [summary] = box.list_messages()
    assert receipt.reply == f"stored as {summary.key}"
    assert summary.recipient == "bob@example.org"  # the envelope, not the To header
    assert summary.sender == f"Tracker <{SENDER}>"
    assert summary.subject == "Crash on save"
    assert summary.message_id == message["Message-ID"]
    assert isinstance(summary.date, datetime)
    stored = box.get_message(summary.key)
    assert stored["Delivered-To"] == "bob@example.org"
    assert stored["Return-Path"] == f"<{SENDER}>"
    assert stored["Cc"] == "carol@example.org"
    assert stored.get_content() == message.get_content()


def test_list_is_newest_first_and_pages(box):
    for i in range(5):
        box.send(build_message(subject=f"message {i}"), SENDER, "bob@example.org")

    subjects = [s.subject for s in box.list_messages(limit=10)]
    page = [s.subject for s in box.list_messages(limit=2, offset=1)]

    assert subjects == [f"message {i}" for i in reversed(range(5))]
    assert page == ["message 3", "message 2"]
    assert box.count() == 5


def test_list_filters_by_recipient(box):
    for i in range(6):
        box.send(
            build_message(subject=f"message {i}"), SENDER, "bob@example.org" if i % 2 else "al@example.org"
        )

    bob = box.list_messages(recipient="BOB@example.org")
    second_page = box.list_messages(limit=1, offset=1, recipient="bob@example.org")

    assert [s.subject for s in bob] == ["message 5", "message 3", "message 1"]
    assert [s.subject for s in second_page] == ["message 3"]


def test_clear_empties_the_mailbox(box):
    for _ in range(3):
        box.send(build_message(), SENDER, "bob@example.org")

    assert box.clear() == 3
    assert box.count() == 0
    assert box.list_messages() == []


def test_empty_mailbox_is_created_on_first_use(settings):
    box = MailboxTransport(settings)

    assert box.count() == 0
    assert box.list_messages() == []


def test_threads_write_concurrently(settings):
    def work(n: int) -> None:
        box = MailboxTransport(settings)  # as the web's thread pool would: some share, some do not
        for i in range(10):
            shared.send(build_message(subject=f"s{n}/{i}"), SENDER, f"user{n}@example.org")
            box.send(build_message(subject=f"o{n}/{i}"), SENDER, f"user{n}@example.org")

    shared = MailboxTransport(settings)
    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    summaries = shared.list_messages(limit=1000)
    assert len(summaries) == 160
    assert len({s.key for s in summaries}) == 160
    assert {s.subject for s in summaries} == {
        f"{k}{n}/{i}" for k in "so" for n in range(8) for i in range(10)
    }


def test_processes_write_concurrently(settings, tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from herald.config import load_settings
        from herald.mail import MailboxTransport
        from tests.mail.messages import SENDER, build_message

        box = MailboxTransport(load_settings(env={"HERALD_DATA_DIR": sys.argv[1]}))
        sys.stdin.read()  # start together
        for i in range(20):
            box.send(build_message(subject=f"{sys.argv[2]}/{i}"), SENDER, "bob@example.org")
        """
    )
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(settings.data_dir), str(n)],
            cwd=root,
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(3)
    ]
    for proc in procs:
        proc.stdin.close()
    for proc in procs:
        assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()
        proc.stderr.close()

    box = MailboxTransport(settings)
    assert box.count() == 60
    assert {s.subject for s in box.list_messages(limit=100)} == {
        f"{n}/{i}" for n in range(3) for i in range(20)
    }


@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        ".hidden",
        "new/123",
        "a\\b",
        "a\0b",
        "",
        "x" * 300,
        "cur/../x",
    ],
)
def test_traversal_looking_keys_are_refused(box, key):
    box.send(build_message(), SENDER, "bob@example.org")

    with pytest.raises(ValueError, match="not a mailbox key"):
        box.get_message(key)


def test_unknown_key_is_a_key_error(box):
    with pytest.raises(KeyError):
        box.get_message("1700000000.M1P1Q1.example")


def test_bad_envelope_is_refused(box):
    with pytest.raises(PermanentMailError):
        box.send(build_message(), SENDER, "bob@example.org\nBcc: eve@example.org")

    assert box.count() == 0


def test_negative_paging_is_refused(box):
    with pytest.raises(ValueError):
        box.list_messages(limit=-1)


def test_send_bytes_stores_the_given_bytes(box, settings):
    from herald.mail.transport import serialize

    raw = serialize(build_message(subject="as given"))

    receipt = box.send_bytes(raw, SENDER, "bob@example.org", message_id="<given@x>")

    key = receipt.reply.removeprefix("stored as ")
    stored = (settings.mailbox_dir / "new" / key).read_bytes()
    assert stored == f"Return-Path: <{SENDER}>\nDelivered-To: bob@example.org\n".encode() + raw.replace(
        b"\r\n", b"\n"
    )
    assert receipt.message_id == "<given@x>"


def test_an_unwritable_mailbox_holds_the_relay(tmp_path):
    (tmp_path / "data").write_text("a file where the data directory should be")
    box = MailboxTransport(load_settings(env={"HERALD_DATA_DIR": str(tmp_path / "data")}))

    with pytest.raises(TransientMailError) as info:
        box.send_bytes(b"Subject: x\r\n\r\nx\r\n", SENDER, "bob@example.org")
    with pytest.raises(TransientMailError) as probed:
        box.probe()

    assert info.value.relay_down and probed.value.relay_down
