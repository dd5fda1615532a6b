"""classify(): smtplib, socket and ssl exceptions into herald's error tree (pure logic, no server)."""

from __future__ import annotations

import pickle
import smtplib
import socket
import ssl

import pytest

from herald.mail import (
    MailConfigError,
    MailConnectionError,
    MailError,
    MailTimeoutError,
    PermanentMailError,
    TransientMailError,
    classify,
)


def _disconnected_by_timeout() -> smtplib.SMTPServerDisconnected:
    try:
        try:
            raise TimeoutError("timed out")
        except OSError as exc:  # what smtplib.getreply does
            raise smtplib.SMTPServerDisconnected(f"Connection unexpectedly closed: {exc}") from None
    except smtplib.SMTPServerDisconnected as exc:
        exc.__context__ = TimeoutError("timed out")
        return exc


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (smtplib.SMTPDataError(451, b"4.3.0 try later"), TransientMailError, 451),
        (smtplib.SMTPDataError(554, b"5.6.0 rejected"), PermanentMailError, 554),
        (smtplib.SMTPDataError(552, b"5.3.4 too big"), PermanentMailError, 552),
        (smtplib.SMTPDataError(421, b"4.3.2 closing"), MailConnectionError, 421),
        (smtplib.SMTPRecipientsRefused({"a@x": (550, b"5.1.1 unknown")}), PermanentMailError, 550),
        (smtplib.SMTPRecipientsRefused({"a@x": (452, b"4.2.2 full")}), TransientMailError, 452),
        (smtplib.SMTPSenderRefused(553, b"5.7.1 not yours", "h@x"), MailConfigError, 553),
        (smtplib.SMTPSenderRefused(451, b"4.3.0 later", "h@x"), TransientMailError, 451),
        (smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"), MailConfigError, 535),
        (smtplib.SMTPDataError(530, b"5.7.0 authentication required"), MailConfigError, 530),
        (smtplib.SMTPConnectError(554, b"5.7.1 go away"), MailConnectionError, 554),
        (smtplib.SMTPConnectError(-1, b"garbage"), MailConnectionError, None),
        (smtplib.SMTPHeloError(-1, b"?"), MailConnectionError, None),
        (smtplib.SMTPResponseException(500, "Line too long."), MailConnectionError, None),
        (smtplib.SMTPDataError(299, b"odd"), MailConnectionError, 299),
        (smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported"), MailConfigError, None),
        (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), MailConnectionError, None),
        (_disconnected_by_timeout(), MailTimeoutError, None),
        (smtplib.SMTPException("something"), TransientMailError, None),
        (ConnectionRefusedError(111, "Connection refused"), MailConnectionError, None),
        (ConnectionResetError(104, "Connection reset by peer"), MailConnectionError, None),
        (TimeoutError("timed out"), MailTimeoutError, None),
        (socket.gaierror(-2, "Name or service not known"), MailConnectionError, None),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), MailConfigError, None),
        (ssl.SSLError(1, "wrong version number"), MailConnectionError, None),
        (RuntimeError("surprise"), TransientMailError, None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_classify(exc, kind, code):
    error = classify(exc)

    assert type(error) is kind
    assert error.code == code
    assert isinstance(error.reply, str)


def test_4xx_is_never_permanent_and_5xx_never_transient_except_config():
    for code in range(400, 600):
        error = classify(smtplib.SMTPDataError(code, b"x"))
        assert isinstance(error, TransientMailError) == (code < 500 or isinstance(error, MailConfigError))
        assert isinstance(error, PermanentMailError) == (
            code >= 500 and not isinstance(error, MailConfigError)
        )


def test_refused_recipient_is_named():
    refused = smtplib.SMTPRecipientsRefused({"a@x": (450, b"busy"), "b@x": (550, b"unknown")})

    error = classify(refused, recipient="b@x")

    assert (type(error), error.recipient, error.code, error.reply) == (
        PermanentMailError,
        "b@x",
        550,
        "unknown",
    )


def test_undecodable_reply_does_not_crash():
    error = classify(smtplib.SMTPDataError(550, b"\xff\xfe bad \x81"))

    assert "bad" in error.reply


def test_connection_errors_are_connection_errors():
    assert issubclass(MailConnectionError, ConnectionError)
    assert issubclass(MailTimeoutError, TimeoutError)
    assert issubclass(MailConfigError, TransientMailError)
    assert not issubclass(MailConfigError, PermanentMailError)


def test_mail_error_is_returned_unchanged():
    error = PermanentMailError("x", code=550)

    assert classify(error) is error


@pytest.mark.parametrize("kind", [MailError, PermanentMailError, MailConnectionError, MailTimeoutError])
def test_errors_pickle(kind):
    error = kind("refused", code=550, reply="5.1.1 unknown", recipient="a@x")

    copy = pickle.loads(pickle.dumps(error))

    assert (type(copy), str(copy), copy.code, copy.reply, copy.recipient) == (
        kind,
        "refused",
        550,
        "5.1.1 unknown",
        "a@x",
    )
    assert repr(copy) == f"{kind.__name__}('refused', code=550, recipient='a@x')"


# --- relay_down: the relay itself is at fault, no recipient is to blame ------------------------------


@pytest.mark.parametrize(
    ("exc", "relay_down"),
    [
        # the relay is unreachable, unresponsive or refuses the session
        (ConnectionRefusedError(111, "Connection refused"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), True),
        (TimeoutError("timed out"), True),
        (_disconnected_by_timeout(), True),
        (socket.gaierror(-2, "Name or service not known"), True),
        (ssl.SSLError(1, "wrong version number"), True),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), True),
        (smtplib.SMTPConnectError(421, b"4.3.2 service not available"), True),
        (smtplib.SMTPConnectError(554, b"5.7.1 go away"), True),
        (smtplib.SMTPHeloError(421, b"4.3.2 service not available"), True),
        (smtplib.SMTPConnectError(-1, b"garbage"), True),
        # herald's own mail configuration
        (smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"), True),
        (smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported"), True),
        (smtplib.SMTPSenderRefused(553, b"5.7.1 not yours", "h@x"), True),
        # MAIL FROM names no recipient: even its 4xx is the relay's
        (smtplib.SMTPSenderRefused(451, b"4.3.0 local error", "h@x"), True),
        (smtplib.SMTPSenderRefused(421, b"4.3.2 closing", "h@x"), True),
        # 421 to RCPT or DATA: the relay is closing, not judging the recipient
        (smtplib.SMTPRecipientsRefused({"a@x": (421, b"4.3.2 closing")}), True),
        (smtplib.SMTPDataError(421, b"4.3.2 closing"), True),
        # one recipient's transient or permanent refusal
        (smtplib.SMTPRecipientsRefused({"a@x": (450, b"4.2.1 busy")}), False),
        (smtplib.SMTPRecipientsRefused({"a@x": (451, b"4.3.0 later")}), False),
        (smtplib.SMTPRecipientsRefused({"a@x": (452, b"4.2.2 full")}), False),
        (smtplib.SMTPRecipientsRefused({"a@x": (550, b"5.1.1 unknown")}), False),
        (smtplib.SMTPDataError(451, b"4.3.0 try later"), False),
        (smtplib.SMTPDataError(554, b"5.6.0 rejected"), False),
        (smtplib.SMTPDataError(552, b"5.3.4 too big"), False),
        (RuntimeError("surprise"), False),
    ],
    ids=lambda v: (
        f"{type(v).__name__}-{getattr(v, 'smtp_code', '')}" if isinstance(v, BaseException) else None
    ),
)
def test_relay_down(exc, relay_down):
    assert classify(exc, recipient="a@x").relay_down is relay_down


def test_relay_down_by_type_and_override():
    assert MailConnectionError("x").relay_down
    assert MailTimeoutError("x").relay_down
    assert MailConfigError("x").relay_down
    assert not TransientMailError("x").relay_down
    assert not PermanentMailError("x").relay_down
    assert TransientMailError("disk full", relay_down=True).relay_down
    assert not MailConnectionError("x", relay_down=False).relay_down


def test_relay_down_survives_pickling():
    error = TransientMailError("x", code=451, relay_down=True)

    assert pickle.loads(pickle.dumps(error)).relay_down
