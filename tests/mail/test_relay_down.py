"""relay_down against real servers: which failures hold the whole relay, which blame one recipient.

Each case runs through the pool (the delivery engine's path) and, for the connect-level ones, through
``probe()`` too, which is what the engine calls while holding.
"""

from __future__ import annotations

import pytest

from herald.mail import (
    MailConfigError,
    MailConnectionError,
    MailTimeoutError,
    PermanentMailError,
    RelayPool,
    SmtpTransport,
    TransientMailError,
)
from herald.mail.transport import serialize
from tests.mail.messages import SENDER, build_message
from tests.support.smtp import HANG, smtp_settings

RAW = serialize(build_message())


def pool_for(settings, **kwargs) -> RelayPool:
    return RelayPool(settings, max_connections=2, **kwargs)


def send_through(pool: RelayPool, recipient: str = "bob@example.org"):
    with pool:
        return pool.send_bytes(RAW, SENDER, recipient, message_id="<m@x>")


def settings_for(host: str, port: int, **overrides):
    from herald.config import load_settings

    env = {"HERALD_SMTP_HOST": host, "HERALD_SMTP_PORT": str(port), "HERALD_SMTP_TIMEOUT": "2"}
    env.update({f"HERALD_{k.upper()}": str(v) for k, v in overrides.items()})
    return load_settings(env=env)


def test_server_down_holds_the_relay(closed_port):
    settings = settings_for("127.0.0.1", closed_port)

    with pytest.raises(MailConnectionError) as sent:
        send_through(pool_for(settings))
    with pytest.raises(MailConnectionError) as probed:
        pool_for(settings).probe()

    assert sent.value.relay_down and probed.value.relay_down


def test_421_greeting_holds_the_relay(make_raw_server):
    server = make_raw_server(b"421 4.3.2 service not available\r\n")
    settings = settings_for(server.host, server.port)

    with pytest.raises(MailConnectionError) as sent:
        send_through(pool_for(settings))
    with pytest.raises(MailConnectionError) as probed:
        pool_for(settings).probe()

    assert sent.value.code == probed.value.code == 421
    assert sent.value.relay_down and probed.value.relay_down


def test_421_to_rcpt_holds_the_relay(smtp_server):
    smtp_server.refuse_recipient("bob@example.org", "421 4.3.2 shutting down")

    with pytest.raises(MailConnectionError) as info:
        send_through(pool_for(smtp_settings(smtp_server)))

    assert info.value.code == 421
    assert info.value.relay_down


def test_451_to_rcpt_blames_that_recipient_only(smtp_server):
    smtp_server.refuse_recipient("busy@example.org", "451 4.3.0 try again later")
    pool = pool_for(smtp_settings(smtp_server))

    with pool:
        with pytest.raises(TransientMailError) as info:
            pool.send_bytes(RAW, SENDER, "busy@example.org")
        pool.send_bytes(RAW, SENDER, "bob@example.org")

    assert not isinstance(info.value, PermanentMailError)
    assert (info.value.code, info.value.recipient, info.value.relay_down) == (451, "busy@example.org", False)
    assert len(smtp_server.wait_for(1)) == 1
    assert smtp_server.connections == 1  # the session survived the refusal


def test_550_to_rcpt_is_permanent_for_that_recipient(smtp_server):
    smtp_server.refuse_recipient("nobody@example.org")

    with pytest.raises(PermanentMailError) as info:
        send_through(pool_for(smtp_settings(smtp_server)), "nobody@example.org")

    assert (info.value.code, info.value.relay_down) == (550, False)


def test_451_to_data_blames_that_recipient_only(smtp_server):
    smtp_server.script_data("451 4.3.0 queue full")

    with pytest.raises(TransientMailError) as info:
        send_through(pool_for(smtp_settings(smtp_server)))

    assert (info.value.code, info.value.relay_down) == (451, False)


def test_refused_login_holds_the_relay(make_smtp_server):
    server = make_smtp_server(auth=("herald", "right-password"))
    settings = smtp_settings(server, smtp_password="wrong-password")

    with pytest.raises(MailConfigError) as sent:
        send_through(pool_for(settings))
    with pytest.raises(MailConfigError) as probed:
        pool_for(settings).probe()

    assert sent.value.code == probed.value.code == 535
    assert sent.value.relay_down and probed.value.relay_down
    assert "wrong-password" not in str(sent.value) + str(probed.value)


def test_tls_handshake_failure_holds_the_relay(smtp_server):
    settings = smtp_settings(smtp_server, smtp_security="tls")  # a plain server behind implicit TLS

    with pytest.raises(MailConnectionError, match="TLS") as sent:
        send_through(pool_for(settings))
    with pytest.raises(MailConnectionError, match="TLS") as probed:
        pool_for(settings).probe()

    assert sent.value.relay_down and probed.value.relay_down
    assert smtp_server.messages == []


def test_starttls_not_offered_holds_the_relay(smtp_server):
    settings = smtp_settings(smtp_server, smtp_security="starttls")

    with pytest.raises(MailConfigError, match="STARTTLS") as probed:
        pool_for(settings).probe()

    assert probed.value.relay_down


def test_slow_data_past_the_timeout_holds_the_relay(smtp_server):
    smtp_server.script_data(HANG)

    with pytest.raises(MailTimeoutError) as info:
        send_through(pool_for(smtp_settings(smtp_server, smtp_timeout=0.3)))

    assert info.value.relay_down
    assert smtp_server.data_count == 1  # sent once, never again


def test_probe_of_a_working_relay_opens_and_quits(make_smtp_server):
    server = make_smtp_server(security="starttls", auth=("herald", "pw"))
    settings = smtp_settings(server)
    context = server.client_ssl_context()
    pool = pool_for(settings, factory=lambda: SmtpTransport(settings, ssl_context=context))

    pool.probe()

    assert server.connections == 1
    server.wait_disconnected()
    assert server.messages == []
