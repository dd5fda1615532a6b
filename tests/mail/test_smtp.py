"""SmtpTransport against a real SMTP server (aiosmtpd) and against servers that misbehave."""

from __future__ import annotations

import threading
import time
from email import policy

import pytest

from herald.mail import (
    MailConnectionError,
    MailError,
    MailTimeoutError,
    PermanentMailError,
    SmtpTransport,
    TransientMailError,
)
from tests.mail.messages import SENDER, build_message
from tests.support.smtp import DROP, HANG, smtp_settings


@pytest.fixture
def transport(smtp_server):
    with SmtpTransport(smtp_settings(smtp_server)) as transport:
        yield transport


def test_message_arrives_byte_for_byte_to_the_envelope_recipient_only(smtp_server, transport):
    body = "Status: Open → Closed\n.a line starting with a dot\nlast line\n"
    message = build_message(to="alice@example.org", body=body, Cc="carol@example.org")

    receipt = transport.send(message, SENDER, "bob@example.org")

    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ("bob@example.org",)  # not the To or Cc header
    assert received.mail_from == SENDER
    assert received.data == message.as_bytes(policy=policy.SMTP)
    assert b"\n" not in received.data.replace(b"\r\n", b"")  # CRLF only
    assert received.message().get_content().replace("\r\n", "\n") == body
    assert received.mail_options == ("BODY=8BITMIME",)  # the UTF-8 body goes out as 8bit
    assert receipt.recipient == "bob@example.org"
    assert receipt.code == 250
    assert "queued" in receipt.reply
    assert receipt.message_id == message["Message-ID"]


def test_one_connection_carries_many_messages(smtp_server, transport):
    for i in range(5):
        transport.send(build_message(subject=f"message {i}"), SENDER, f"user{i}@example.org")

    received = smtp_server.wait_for(5)
    assert smtp_server.connections == 1
    assert [r.rcpt_tos[0] for r in received] == [f"user{i}@example.org" for i in range(5)]


def test_close_says_quit(smtp_server, transport):
    transport.send(build_message(), SENDER, "bob@example.org")
    assert smtp_server.open_connections == 1

    transport.close()

    smtp_server.wait_disconnected()


def test_dropped_idle_connection_is_reopened_once_without_duplicates(smtp_server, transport):
    transport.send(build_message(subject="first"), SENDER, "bob@example.org")
    smtp_server.drop_connections()

    transport.send(build_message(subject="second"), SENDER, "bob@example.org")

    received = smtp_server.wait_for(2)
    assert [r.message()["Subject"] for r in received] == ["first", "second"]
    assert [r.connection for r in received] == [1, 2]


def test_421_on_a_reused_connection_is_reopened_once(smtp_server, transport):
    transport.send(build_message(), SENDER, "bob@example.org")
    smtp_server.script_mail("421 4.4.2 idle too long, closing")

    transport.send(build_message(), SENDER, "bob@example.org")

    assert len(smtp_server.wait_for(2)) == 2
    assert smtp_server.connections == 2


def test_421_on_a_fresh_connection_is_not_retried(smtp_server, transport):
    smtp_server.script_mail("421 4.3.2 shutting down", "421 4.3.2 shutting down")

    with pytest.raises(MailConnectionError) as info:
        transport.send(build_message(), SENDER, "bob@example.org")

    assert info.value.code == 421
    assert smtp_server.connections == 1


def test_451_on_data_is_transient_and_the_connection_stays_usable(smtp_server, transport):
    smtp_server.script_data("451 4.3.0 try again later", "250 2.0.0 OK")

    with pytest.raises(TransientMailError) as info:
        transport.send(build_message(), SENDER, "bob@example.org")

    assert not isinstance(info.value, PermanentMailError)
    assert info.value.code == 451
    assert "try again later" in info.value.reply
    assert info.value.recipient == "bob@example.org"
    assert smtp_server.messages == []
    transport.send(build_message(), SENDER, "bob@example.org")  # the worker's retry
    assert len(smtp_server.wait_for(1)) == 1
    assert smtp_server.connections == 1


def test_554_on_data_is_permanent(smtp_server, transport):
    smtp_server.script_data("554 5.6.0 message content rejected")

    with pytest.raises(PermanentMailError) as info:
        transport.send(build_message(), SENDER, "bob@example.org")

    assert info.value.code == 554
    assert "content rejected" in str(info.value)


def test_refused_recipient_fails_alone_and_the_connection_carries_on(smtp_server, transport):
    smtp_server.refuse_recipient("nobody@example.org")

    with pytest.raises(PermanentMailError) as info:
        transport.send(build_message(to="nobody@example.org"), SENDER, "nobody@example.org")
    transport.send(build_message(), SENDER, "bob@example.org")

    assert info.value.code == 550
    assert info.value.recipient == "nobody@example.org"
    assert "no such user" in info.value.reply
    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ("bob@example.org",)
    assert smtp_server.connections == 1


def test_busy_mailbox_is_transient(smtp_server, transport):
    smtp_server.refuse_recipient("busy@example.org", "450 4.2.1 mailbox busy")

    with pytest.raises(TransientMailError) as info:
        transport.send(build_message(), SENDER, "busy@example.org")

    assert info.value.code == 450
    assert info.value.recipient == "busy@example.org"


def test_refused_sender_is_a_configuration_error(smtp_server, transport):
    from herald.mail import MailConfigError

    smtp_server.script_mail("553 5.7.1 sender not owned by you")

    with pytest.raises(MailConfigError) as info:
        transport.send(build_message(), SENDER, "bob@example.org")

    assert info.value.code == 553
    transport.send(build_message(), SENDER, "bob@example.org")
    assert len(smtp_server.wait_for(1)) == 1


@pytest.mark.parametrize("failure", [DROP, HANG])
def test_message_whose_data_went_out_is_never_resent(smtp_server, failure):
    settings = smtp_settings(smtp_server, smtp_timeout=0.5)
    smtp_server.script_data(failure)

    with SmtpTransport(settings) as transport, pytest.raises(MailConnectionError) as info:
        transport.send(build_message(), SENDER, "bob@example.org")

    assert isinstance(info.value, MailTimeoutError) == (failure == HANG)
    assert smtp_server.data_count == 1
    assert smtp_server.connections == 1


def test_connection_refused_is_transient(closed_port):
    settings = smtp_settings_for("127.0.0.1", closed_port)

    with SmtpTransport(settings) as transport, pytest.raises(MailConnectionError) as info:
        transport.send(build_message(), SENDER, "bob@example.org")

    assert isinstance(info.value, TransientMailError)
    assert isinstance(info.value, ConnectionError)
    assert not isinstance(info.value, TimeoutError)


def test_silent_server_times_out(make_raw_server):
    server = make_raw_server(accept=False)  # the kernel completes the handshake, nobody ever speaks
    settings = smtp_settings_for(server.host, server.port, smtp_timeout=0.3)

    started = time.monotonic()
    with SmtpTransport(settings) as transport, pytest.raises(MailTimeoutError) as info:
        transport.send(build_message(), SENDER, "bob@example.org")

    assert time.monotonic() - started < 3
    assert isinstance(info.value, TransientMailError)
    assert isinstance(info.value, TimeoutError)


@pytest.mark.parametrize(
    "greeting",
    [
        pytest.param(b"garbage\r\n", id="greeting-garbage"),
        pytest.param(b"\xff\xfe\x00\x81\r\n", id="greeting-binary"),
        pytest.param(b"220" + b"x" * 9000 + b"\r\n", id="greeting-too-long"),
        pytest.param(b"554 5.7.1 no service for you\r\n", id="greeting-refusal"),
        pytest.param(b"220 hello\r\nnot smtp\r\nstill not smtp\r\n", id="ehlo-garbage"),
        pytest.param(b"220 hello\r\n250 ok\r\n", id="silent-after-ehlo"),
    ],
)
def test_malformed_server_gives_a_classified_error(make_raw_server, greeting):
    server = make_raw_server(greeting)
    settings = smtp_settings_for(server.host, server.port, smtp_timeout=0.5)

    with SmtpTransport(settings) as transport, pytest.raises(MailError) as info:
        transport.send(build_message(), SENDER, "bob@example.org")

    assert isinstance(info.value, TransientMailError)
    assert info.value.code in (None, 554)


def test_threads_share_one_transport(smtp_server, transport):
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                transport.send(build_message(subject=f"{n}/{i}"), SENDER, f"user{n}@example.org")
        except BaseException as exc:  # reported below, a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(smtp_server.wait_for(20)) == 20
    assert smtp_server.connections == 1


def test_non_ascii_recipient_uses_smtputf8(smtp_server, transport):
    transport.send(build_message(to="josé@example.org"), SENDER, "josé@example.org")

    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ("josé@example.org",)
    assert received.message()["To"] == "josé@example.org"


def test_header_injection_is_refused_before_connecting(smtp_server, transport):
    message = build_message()
    message.set_raw("Subject", "hello\r\nBcc: everyone@example.org")

    with pytest.raises(PermanentMailError, match="Subject"):
        transport.send(message, SENDER, "bob@example.org")

    assert smtp_server.connections == 0


@pytest.mark.parametrize(
    "recipient", ["", "bob@example.org\r\nRCPT TO:<eve@example.org>", "<bob@example.org>"]
)
def test_bad_envelope_recipient_is_refused_before_connecting(smtp_server, transport, recipient):
    with pytest.raises(PermanentMailError, match="recipient"):
        transport.send(build_message(), SENDER, recipient)

    assert smtp_server.connections == 0


def smtp_settings_for(host: str, port: int, **overrides: object):
    from herald.config import load_settings

    env = {"HERALD_SMTP_HOST": host, "HERALD_SMTP_PORT": str(port), "HERALD_SMTP_TIMEOUT": "2"}
    env.update({f"HERALD_{k.upper()}": str(v) for k, v in overrides.items()})
    return load_settings(env=env)


def test_send_bytes_sends_the_bytes_unchanged(smtp_server, transport):
    from herald.mail.transport import serialize

    raw = serialize(build_message(body="ligne\n.point\n"))

    receipt = transport.send_bytes(raw, SENDER, "bob@example.org", message_id="<given@x>")

    [received] = smtp_server.wait_for(1)
    assert received.data == raw
    assert receipt.message_id == "<given@x>"
    assert received.mail_options == ()  # ASCII bytes: no BODY=8BITMIME, no SMTPUTF8


def test_send_bytes_asks_for_smtputf8_when_told(smtp_server, transport):
    from herald.mail.transport import serialize

    raw = serialize(build_message(to="josé@example.org"), utf8=True)

    transport.send_bytes(raw, SENDER, "bob@example.org", utf8=True)

    [received] = smtp_server.wait_for(1)
    assert received.data == raw
    assert set(received.mail_options) == {"SMTPUTF8", "BODY=8BITMIME"}


def test_send_bytes_checks_the_envelope(smtp_server, transport):
    with pytest.raises(PermanentMailError, match="sender"):
        transport.send_bytes(b"Subject: x\r\n\r\nx\r\n", "a@x>\r\nRSET", "bob@example.org")

    assert smtp_server.connections == 0


@pytest.mark.parametrize("offered", [False, True])
def test_pipelining_is_used_exactly_when_offered(make_smtp_server, monkeypatch, offered):
    server = make_smtp_server(pipelining=offered)
    calls: list[str] = []
    for name in ("_pipelined", "_stepwise"):
        original = getattr(SmtpTransport, name)
        monkeypatch.setattr(
            SmtpTransport, name, lambda self, *a, _o=original, _n=name: calls.append(_n) or _o(self, *a)
        )

    with SmtpTransport(smtp_settings(server)) as transport:
        transport.send(build_message(), SENDER, "bob@example.org")

    assert calls == (["_pipelined"] if offered else ["_stepwise"])
    assert len(server.wait_for(1)) == 1
