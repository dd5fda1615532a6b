"""SmtpTransport with STARTTLS, implicit TLS and AUTH, against aiosmtpd with a self-signed certificate."""

from __future__ import annotations

import traceback

import pytest

from herald.mail import MailConfigError, SmtpTransport, TransientMailError
from tests.mail.messages import SENDER, build_message
from tests.support.smtp import smtp_settings

PASSWORD = "s3cret-Pa55word"


def send_one(server, **settings_overrides):
    settings = smtp_settings(server, **settings_overrides)
    context = server.client_ssl_context() if server.ca_file else None
    with SmtpTransport(settings, ssl_context=context) as transport:
        return transport.send(build_message(), SENDER, "bob@example.org")


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_modes_deliver_encrypted(make_smtp_server, security):
    server = make_smtp_server(security=security)

    receipt = send_one(server)

    [received] = server.wait_for(1)
    assert received.tls
    assert receipt.code == 250


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_untrusted_certificate_is_a_configuration_error(make_smtp_server, security):
    server = make_smtp_server(security=security)
    settings = smtp_settings(server)

    with SmtpTransport(settings) as transport, pytest.raises(MailConfigError, match="certificate"):
        transport.send(build_message(), SENDER, "bob@example.org")  # default context: system CAs only

    assert server.messages == []


def test_starttls_not_offered_is_a_configuration_error(smtp_server):
    with pytest.raises(MailConfigError, match="STARTTLS"):
        send_one(smtp_server, smtp_security="starttls")


@pytest.mark.parametrize("security", ["none", "starttls", "tls"])
def test_auth_with_the_right_password(make_smtp_server, security):
    server = make_smtp_server(security=security, auth=("herald", PASSWORD))

    send_one(server)

    [received] = server.wait_for(1)
    assert received.login == "herald"


def test_wrong_password_is_a_configuration_error_that_does_not_show_it(make_smtp_server):
    server = make_smtp_server(auth=("herald", PASSWORD))

    with pytest.raises(MailConfigError) as info:
        send_one(server, smtp_password="wrong-" + PASSWORD)

    error = info.value
    assert isinstance(error, TransientMailError)  # retried once the configuration is fixed
    assert error.code == 535
    shown = "".join(traceback.format_exception(error)) + repr(error) + error.reply
    assert PASSWORD not in shown
    assert "herald" in str(error)  # the user is named, to help the admin
    assert server.messages == []


def test_password_echoed_by_the_server_is_masked(make_smtp_server):
    from aiosmtpd.smtp import AuthResult

    def echo(server, session, envelope, mechanism, auth_data):
        return AuthResult(
            success=False, handled=False, message=f"535 5.7.8 bad password {auth_data.password.decode()}"
        )

    server = make_smtp_server(auth=("herald", PASSWORD), authenticator=echo)

    with pytest.raises(MailConfigError) as info:
        send_one(server)

    shown = "".join(traceback.format_exception(info.value)) + repr(info.value) + info.value.reply
    assert PASSWORD not in shown
    assert "********" in info.value.reply


def test_server_requiring_auth_without_credentials_is_a_configuration_error(make_smtp_server):
    server = make_smtp_server(auth=("herald", PASSWORD))

    with pytest.raises(MailConfigError) as info:
        send_one(server, smtp_user=None, smtp_password=None)

    assert info.value.code == 530


def test_auth_not_offered_is_a_configuration_error(smtp_server):
    with pytest.raises(MailConfigError, match="AUTH"):
        send_one(smtp_server, smtp_user="herald", smtp_password=PASSWORD)


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_smtp_ca_file_setting_trusts_a_private_ca(make_smtp_server, security):
    from herald.mail import make_transport

    server = make_smtp_server(security=security)
    settings = smtp_settings(server, smtp_ca_file=str(server.ca_file))

    with make_transport(settings) as transport:
        receipt = transport.send(build_message(), SENDER, "bob@example.org")

    [received] = server.wait_for(1)
    assert received.tls and receipt.code == 250
