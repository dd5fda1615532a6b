"""``herald mailbox list`` shows keys whole; ``show`` takes a unique prefix and prints the stored bytes."""

from __future__ import annotations

from email.headerregistry import Address
from pathlib import Path

import pytest

from herald.cli.main import RET_ERROR
from herald.config import load_settings
from herald.mail import MailboxTransport
from tests.cli.helpers import invoke
from tests.mail.messages import SENDER, build_message


@pytest.fixture
def var(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def box(var: Path):
    with MailboxTransport(load_settings(env={"HERALD_DATA_DIR": str(var)})) as box:
        yield box


def _notification():
    """As herald sends: non-ASCII subject and body (quoted-printable), an HTML part, List-Unsubscribe."""
    message = build_message(subject="[bug #1] Brouillon modifié", body="Le statut a été modifié.\n")
    message.replace_header("To", Address("Bob Léger", addr_spec="bob@example.org"))
    message["List-Unsubscribe"] = "<http://127.0.0.1:8080/unsubscribe/abc>"
    message.add_alternative("<p>Le statut a été <b>modifié</b>.</p>\n", subtype="html")
    return message


def _stored(box: MailboxTransport, key: str) -> bytes:
    [path] = [p for p in (box.path / "new").iterdir() if p.name.startswith(key)]
    return path.read_bytes()


def test_list_shows_every_key_whole_in_80_columns(box, var):
    for i in range(3):
        subject = f"a long subject that needs the whole width {i} " * 2
        box.send(build_message(subject=subject), SENDER, "b@x.org")

    result = invoke(["mailbox", "list"], var)  # not a terminal: what rich treats as 80 columns

    assert result.exit_code == 0, result.output
    keys = [s.key for s in box.list_messages()]
    for key in keys:
        assert any(key in line for line in result.stdout.splitlines()), (key, result.stdout)


def test_show_prints_exactly_the_stored_bytes(box, var):
    receipt = box.send(_notification(), SENDER, "bob@example.org")
    key = receipt.reply.removeprefix("stored as ")

    result = invoke(["mailbox", "show", key[:14]], var)  # a unique start of the key

    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == _stored(box, key)
    assert b"modifi=C3=A9" in result.stdout_bytes  # the body as sent: quoted-printable, untouched


def test_show_decoded_reads_headers_and_the_text_part(box, var):
    receipt = box.send(_notification(), SENDER, "bob@example.org")
    key = receipt.reply.removeprefix("stored as ")

    result = invoke(["mailbox", "show", key, "--decoded"], var)

    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "Subject: [bug #1] Brouillon modifié\n" in text
    assert "To: Bob Léger <bob@example.org>\n" in text
    assert "List-Unsubscribe: <http://127.0.0.1:8080/unsubscribe/abc>\n" in text
    assert "\n\nLe statut a été modifié.\n" in text
    assert "<b>" not in text
    assert "[HTML part:" in text


def test_an_ambiguous_prefix_lists_the_matches(box, var):
    keys = [box.send(build_message(), SENDER, "b@x.org").reply.removeprefix("stored as ") for _ in range(2)]
    same = next(i for i, (a, b) in enumerate(zip(*keys, strict=False)) if a != b)
    prefix = keys[0][:same]  # both were delivered in the same second or so: a common start
    assert prefix

    result = invoke(["mailbox", "show", prefix], var)

    assert result.exit_code == RET_ERROR
    assert result.stdout == ""
    assert result.stderr.startswith(f"herald: 2 messages start with {prefix!r}; give more of the key:\n")
    for key in keys:
        assert f"\n  {key}" in result.stderr


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("9999", "herald: no message key starts with '9999' (herald mailbox list shows the keys)\n"),
        ("../etc", "herald: malformed message key '../etc'\n"),
        ("", "herald: malformed message key ''\n"),
    ],
)
def test_unknown_or_malformed_keys_are_one_clear_line(box, var, key, message):
    box.send(build_message(), SENDER, "b@x.org")

    result = invoke(["mailbox", "show", key], var)

    assert result.exit_code == RET_ERROR
    assert result.stderr == message
    assert result.stdout == ""
