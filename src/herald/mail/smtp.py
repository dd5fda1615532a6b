"""Delivery through an SMTP server with smtplib, over one connection kept open between messages."""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import smtplib
import ssl
import threading

from herald.config import Settings
from herald.mail.errors import (
    MailConfigError,
    MailError,
    PermanentMailError,
    caused_by_timeout,
    classify,
    decode_reply,
    from_reply,
)
from herald.mail.transport import (
    Receipt,
    Transport,
    check_envelope,
    needs_smtputf8,
)

__all__ = ["SmtpTransport"]

log = logging.getLogger(__name__)

# Errors from smtplib, sockets and ssl (ssl.SSLError is an OSError); anything else is a bug and propagates.
_SMTP_ERRORS = (smtplib.SMTPException, OSError)
_LEADING_DOT = re.compile(rb"(?m)^\.")


class SmtpTransport(Transport):
    """Sends through ``settings.smtp_host`` with ``smtp_security`` none, starttls or tls, and optional AUTH.

    The connection is opened on the first :meth:`send` and reused for the next ones. A server that
    dropped it while idle is reconnected once, transparently, when the first command of a message finds
    it gone; a message whose DATA got an answer is never sent again. One lock serializes the sends, so a
    transport may be shared by threads (each message waits for the previous one; use one transport per
    thread for parallel sends). ``ssl_context`` replaces ``ssl.create_default_context()``, e.g. to trust a
    test certificate.
    """

    def __init__(self, settings: Settings, *, ssl_context: ssl.SSLContext | None = None) -> None:
        if not settings.smtp_host:
            raise ValueError("SmtpTransport needs settings.smtp_host (without one, use MailboxTransport)")
        self._host = settings.smtp_host
        self._port = settings.smtp_port
        self._security = settings.smtp_security
        self._timeout = settings.smtp_timeout
        self._user = settings.smtp_user
        self._password = settings.smtp_password
        # EHLO with herald's mail domain: smtplib's default, socket.getfqdn(), can stall on reverse DNS.
        self._local_hostname = settings.mail_domain or "localhost"
        self._ssl_context = ssl_context
        self._ca_file = settings.smtp_ca_file
        self._lock = threading.Lock()
        self._conn: smtplib.SMTP | None = None

    def __repr__(self) -> str:
        return (
            f"SmtpTransport(host={self._host!r}, port={self._port}, security={self._security!r}, "
            f"user={self._user!r})"
        )

    def send_bytes(
        self,
        raw: bytes,
        sender: str,
        recipient: str,
        *,
        message_id: str | None = None,
        utf8: bool = False,
    ) -> Receipt:
        """Deliver ``raw`` (serialized, checked, CRLF) to ``recipient`` alone; see :class:`Transport`."""
        check_envelope(sender, recipient)
        utf8 = needs_smtputf8(sender, recipient, utf8)
        with self._lock:
            try:
                code, reply = self._send_locked(raw, sender, recipient, utf8)
            except MailError as exc:
                self._scrub(exc)
                raise
        return Receipt(recipient=recipient, code=code, reply=reply, message_id=message_id)

    def probe(self) -> None:
        """Open a fresh connection (greeting, EHLO, STARTTLS and AUTH as configured), then QUIT.

        Raises the classified :class:`MailError` when the relay is unusable; the kept connection, if
        any, is left alone.
        """
        conn = self._open()
        with contextlib.suppress(*_SMTP_ERRORS):
            conn.quit()
        _close_quietly(conn)

    def close(self) -> None:
        """Say QUIT and close the connection, if one is open."""
        with self._lock:
            self._discard(polite=True)

    # --- one message -----------------------------------------------------------------------------------

    def _send_locked(self, raw: bytes, sender: str, recipient: str, utf8: bool) -> tuple[int, str]:
        for _attempt in range(2):
            reused = self._conn is not None
            conn = self._conn or self._connect()
            options = self._mail_options(conn, raw, utf8, recipient)
            # The envelope was checked (no spaces, brackets or controls), so the commands are built here
            # directly: smtplib's mail()/rcpt() re-parse each address with email.utils, a third of the
            # client's own time per message.
            encoding = "utf-8" if utf8 else "ascii"
            mail = f"MAIL FROM:<{sender}>{''.join(' ' + o for o in options)}\r\n".encode(encoding)
            rcpt = f"RCPT TO:<{recipient}>\r\n".encode(encoding)
            if conn.does_esmtp and conn.has_extn("pipelining"):
                result = self._pipelined(conn, raw, mail, rcpt, sender, recipient, reused)
            else:
                result = self._stepwise(conn, raw, mail, rcpt, sender, recipient, reused)
            if result is not None:
                return result
        raise AssertionError("unreachable: the second attempt always runs on a fresh connection")

    def _stepwise(
        self,
        conn: smtplib.SMTP,
        raw: bytes,
        mail: bytes,
        rcpt: bytes,
        sender: str,
        recipient: str,
        reused: bool,
    ) -> tuple[int, str] | None:
        """MAIL, RCPT, DATA one after the other; None if a reused connection proved closed at MAIL."""
        try:
            conn.send(mail)
            code, reply = conn.getreply()
        except _SMTP_ERRORS as exc:
            self._discard()
            if self._worth_reconnecting(exc, reused):
                return None
            raise classify(exc, recipient=recipient) from exc
        if code == 421 and reused:
            return self._idle_421()
        if code != 250:
            self._reset(conn, code)
            raise classify(smtplib.SMTPSenderRefused(code, reply, sender), recipient=recipient)
        try:
            conn.send(rcpt)
            code, reply = conn.getreply()
            if code in (250, 251):
                conn.send(b"DATA\r\n")
                data_code, data_reply = conn.getreply()
        except _SMTP_ERRORS as exc:
            self._discard()
            raise classify(exc, recipient=recipient) from exc
        if code not in (250, 251):
            self._reset(conn, code)
            raise from_reply(code, decode_reply(reply), f"recipient {recipient} refused", recipient=recipient)
        return self._data(conn, raw, recipient, data_code, data_reply)

    def _pipelined(
        self,
        conn: smtplib.SMTP,
        raw: bytes,
        mail: bytes,
        rcpt: bytes,
        sender: str,
        recipient: str,
        reused: bool,
    ) -> tuple[int, str] | None:
        """MAIL, RCPT and DATA in one write (RFC 2920), three replies read back: one round trip, not three."""
        try:
            conn.send(mail + rcpt + b"DATA\r\n")
            replies = [conn.getreply()]
        except _SMTP_ERRORS as exc:
            self._discard()
            if self._worth_reconnecting(exc, reused):
                return None
            raise classify(exc, recipient=recipient) from exc
        failure: BaseException | None = None
        try:
            replies.append(conn.getreply())
            replies.append(conn.getreply())
        except _SMTP_ERRORS as exc:
            # e.g. the server refused MAIL or RCPT with 421 and hung up: that refusal is the news.
            self._discard()
            failure = exc
        mail_code, mail_reply = replies[0]
        if mail_code == 421 and reused:
            return self._idle_421()
        if mail_code != 250:
            self._after_pipelined_refusal(conn, replies, failure, mail_code)
            raise classify(smtplib.SMTPSenderRefused(mail_code, mail_reply, sender), recipient=recipient)
        if failure is not None and len(replies) < 2:
            raise classify(failure, recipient=recipient) from failure
        rcpt_code, rcpt_reply = replies[1]
        if rcpt_code not in (250, 251):
            self._after_pipelined_refusal(conn, replies, failure, rcpt_code)
            reply = decode_reply(rcpt_reply)
            raise from_reply(rcpt_code, reply, f"recipient {recipient} refused", recipient=recipient)
        if failure is not None:
            raise classify(failure, recipient=recipient) from failure
        data_code, data_reply = replies[2]
        return self._data(conn, raw, recipient, data_code, data_reply)

    def _after_pipelined_refusal(
        self, conn: smtplib.SMTP, replies: list[tuple[int, bytes]], failure: BaseException | None, code: int
    ) -> None:
        if failure is not None:  # already discarded
            return
        if replies[2][0] == 354:
            # A server that accepted DATA with no valid recipient (RFC 2920 forbids it): end it empty.
            try:
                conn.send(b".\r\n")
                conn.getreply()
            except _SMTP_ERRORS:
                self._discard()
                return
        self._reset(conn, code)

    def _data(
        self, conn: smtplib.SMTP, raw: bytes, recipient: str, code: int, reply: bytes
    ) -> tuple[int, str]:
        """Given the reply to DATA, send the message and return the final reply."""
        if code != 354:
            self._reset(conn, code)
            raise classify(smtplib.SMTPDataError(code, reply), recipient=recipient)
        # Past this point the message may have been accepted: never retry it here, even on a
        # disconnect before the reply (the worker decides, knowing it may be the one duplicate).
        try:
            conn.send(_dot_stuffed(raw))
            code, reply = conn.getreply()
        except _SMTP_ERRORS as exc:
            self._discard()
            raise classify(exc, recipient=recipient) from exc
        if code != 250:
            self._reset(conn, code)
            raise from_reply(code, decode_reply(reply), "message refused", recipient=recipient)
        return code, decode_reply(reply)

    def _worth_reconnecting(self, exc: BaseException, reused: bool) -> bool:
        """A reused connection found closed before the server took anything: safe to open a fresh one.

        Not on a timeout: the server is there but silent, and trying again would only double the wait.
        """
        if (
            reused
            and isinstance(exc, smtplib.SMTPServerDisconnected | ConnectionError)
            and not caused_by_timeout(exc)
        ):
            log.info("SMTP server %s:%s closed the idle connection; reconnecting", self._host, self._port)
            return True
        return False

    def _idle_421(self) -> None:
        """The polite form of an idle drop, "421 closing connection": reconnect."""
        self._discard()
        log.info("SMTP server %s:%s closed the idle connection (421); reconnecting", self._host, self._port)
        return None

    def _mail_options(self, conn: smtplib.SMTP, raw: bytes, utf8: bool, recipient: str) -> list[str]:
        options = []
        if utf8:
            if not conn.has_extn("smtputf8"):
                raise PermanentMailError(
                    "SMTP server does not accept non-ASCII addresses (no SMTPUTF8)", recipient=recipient
                )
            options.append("SMTPUTF8")
        if not raw.isascii() and conn.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        return options

    # --- the connection --------------------------------------------------------------------------------

    def _connect(self) -> smtplib.SMTP:
        self._conn = self._open()
        return self._conn

    def _open(self) -> smtplib.SMTP:
        """A new connection, greeted, EHLO'd, upgraded and logged in as configured."""
        log.debug("connecting to SMTP server %s:%s (%s)", self._host, self._port, self._security)
        context = self._context() if self._security != "none" else None
        conn: smtplib.SMTP
        try:
            # The host goes to the constructor (which connects and checks the 220 greeting): smtplib takes
            # the TLS server_hostname from there, not from connect().
            if self._security == "tls":
                conn = smtplib.SMTP_SSL(
                    self._host, self._port, self._local_hostname, timeout=self._timeout, context=context
                )
            else:
                conn = smtplib.SMTP(self._host, self._port, self._local_hostname, timeout=self._timeout)
        except _SMTP_ERRORS as exc:
            raise classify(exc) from exc
        try:
            conn.ehlo_or_helo_if_needed()
            if self._security == "starttls":
                self._starttls(conn, context)
            if self._user:
                self._login(conn)
        except MailError as exc:
            _close_quietly(conn)
            self._scrub(exc)
            raise
        except _SMTP_ERRORS as exc:
            _close_quietly(conn)
            raise classify(exc) from exc
        return conn

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            # smtp_ca_file trusts a private CA (an internal relay) on top of nothing else: the system CAs
            # are not consulted then, so a certificate from the wrong CA is refused.
            ca_file = str(self._ca_file) if self._ca_file else None
            self._ssl_context = ssl.create_default_context(cafile=ca_file)
        return self._ssl_context

    def _starttls(self, conn: smtplib.SMTP, context: ssl.SSLContext | None) -> None:
        if not conn.has_extn("starttls"):
            raise MailConfigError(
                f"SMTP server {self._host}:{self._port} does not offer STARTTLS (smtp_security = starttls)"
            )
        try:
            conn.starttls(context=context)
        except smtplib.SMTPResponseException as exc:
            code, reply = exc.smtp_code, decode_reply(exc.smtp_error)
            raise MailConfigError(f"STARTTLS refused: {code} {reply}", code=code, reply=reply) from exc
        conn.ehlo()

    def _login(self, conn: smtplib.SMTP) -> None:
        assert self._user is not None and self._password is not None  # config requires the pair
        try:
            conn.login(self._user, self._password)
        except smtplib.SMTPServerDisconnected:
            raise
        except smtplib.SMTPResponseException as exc:
            code, reply = exc.smtp_code, decode_reply(exc.smtp_error)
            # ``from None``: nothing from the AUTH exchange goes into the traceback.
            raise MailConfigError(
                f"SMTP authentication as {self._user!r} failed: {code} {reply}", code=code, reply=reply
            ) from None
        except smtplib.SMTPException as exc:
            hint = "" if self._security != "none" else " (servers often offer AUTH only after STARTTLS)"
            raise MailConfigError(f"SMTP authentication as {self._user!r} impossible: {exc}{hint}") from None

    def _reset(self, conn: smtplib.SMTP, code: int) -> None:
        """After a refusal, RSET so the next message starts clean; drop the connection if that fails."""
        if code == 421:  # the server is closing the connection
            self._discard()
            return
        try:
            rset_code, _ = conn.rset()
        except _SMTP_ERRORS:
            rset_code = -1
        if rset_code != 250:
            self._discard()

    def _discard(self, *, polite: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if polite:
            with contextlib.suppress(*_SMTP_ERRORS):
                conn.quit()
        _close_quietly(conn)

    # --- secrets ---------------------------------------------------------------------------------------

    def _scrub(self, exc: MailError) -> None:
        """Mask the password in an error, in case a server echoed what it was sent."""
        if not self._password:
            return
        user, password = self._user or "", self._password
        secrets = [
            password,
            _b64(password),
            _b64(f"\0{user}\0{password}"),
        ]
        text, reply = str(exc), exc.reply
        for secret in secrets:
            text = text.replace(secret, "********")
            reply = reply.replace(secret, "********")
        if text != str(exc) or reply != exc.reply:
            exc.args = (text,)
            exc.reply = reply
            exc.__cause__ = None
            exc.__context__ = None
            exc.__suppress_context__ = True


def _dot_stuffed(raw: bytes) -> bytes:
    """DATA as sent: a leading dot doubled on every line (RFC 5321 4.5.2), CRLF, then the final dot.

    The regex runs only when some line starts with a dot; smtplib's data() runs it on every message.
    """
    if raw.startswith(b".") or b"\n." in raw:
        raw = _LEADING_DOT.sub(b"..", raw)
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    return raw + b".\r\n"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _close_quietly(conn: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        conn.close()
