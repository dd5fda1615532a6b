"""The seam: serialization, envelope checks, make_transport and the public surface."""

from __future__ import annotations

from email import policy

import pytest

import herald.mail
from herald.config import load_settings
from herald.mail import MailboxTransport, PermanentMailError, Receipt, SmtpTransport, make_transport
from herald.mail.transport import check_envelope, serialize
from tests.mail.messages import build_message


def test_public_surface_is_pinned():
    assert set(herald.mail.__all__) == {
        "MailConfigError",
        "MailConnectionError",
        "MailError",
        "MailSummary",
        "MailTimeoutError",
        "MailboxTransport",
        "PermanentMailError",
        "RateLimiter",
        "Receipt",
        "RelayPool",
        "SmtpTransport",
        "Transport",
        "TransientMailError",
        "classify",
        "make_pool",
        "make_transport",
    }


def test_make_transport_uses_smtp_only_when_a_host_is_set(tmp_path):
    with_host = load_settings(env={"HERALD_SMTP_HOST": "mail.example.org"})
    without = load_settings(env={"HERALD_DATA_DIR": str(tmp_path)})

    assert isinstance(make_transport(with_host), SmtpTransport)
    assert isinstance(make_transport(without), MailboxTransport)


def test_smtp_transport_needs_a_host(tmp_path):
    with pytest.raises(ValueError, match="smtp_host"):
        SmtpTransport(load_settings(env={}))


def test_repr_never_shows_the_password():
    settings = load_settings(
        env={
            "HERALD_SMTP_HOST": "mail.example.org",
            "HERALD_SMTP_USER": "u",
            "HERALD_SMTP_PASSWORD": "hunter2",
            "HERALD_SMTP_SECURITY": "starttls",
        }
    )

    assert "hunter2" not in repr(SmtpTransport(settings))


def test_serialize_is_smtp_policy_bytes():
    message = build_message(body="one\ntwo\n")

    data = serialize(message)

    assert data == message.as_bytes(policy=policy.SMTP)
    assert data.count(b"\r\n") == data.count(b"\n")


def test_serialize_refuses_a_header_that_starts_another():
    message = build_message()
    message.set_raw("X-Note", "fine\nBcc: eve@example.org")

    with pytest.raises(PermanentMailError, match="X-Note"):
        serialize(message)


def test_serialize_accepts_long_folded_headers():
    message = build_message(subject="word " * 60)

    assert b"\r\n " in serialize(message).split(b"\r\n\r\n", 1)[0]


@pytest.mark.parametrize(
    ("sender", "recipient"),
    [("", ""), ("a@x", "b@x\r\n"), ("a@x", "b c@x"), ("a@x\n", "b@x"), ("a@x", "<b@x>"), ("a@x", "b@x\x00")],
)
def test_check_envelope_refuses_non_addresses(sender, recipient):
    with pytest.raises(PermanentMailError):
        check_envelope(sender, recipient)


def test_check_envelope_accepts_the_null_sender():
    check_envelope("", "postmaster@example.org")


def test_receipt_is_frozen():
    receipt = Receipt(recipient="a@x", code=250, reply="ok", message_id=None)

    with pytest.raises(AttributeError):
        receipt.code = 550  # type: ignore[misc]
