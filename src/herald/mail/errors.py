"""herald's mail errors: whether a failure is worth retrying is visible in the type.

::

    MailError
    ├── TransientMailError            retry later: 4xx replies, outages, bad configuration
    │   ├── MailConnectionError       (also ConnectionError) refused, reset, dropped, 421, garbled replies
    │   │   └── MailTimeoutError      (also TimeoutError) the server stopped answering
    │   └── MailConfigError           AUTH failed, TLS or AUTH not offered, sender refused
    └── PermanentMailError            5xx for this message or recipient: retrying cannot help

A worker retries a :class:`TransientMailError` with back-off and records a :class:`PermanentMailError`
as that recipient's final outcome. Orthogonal to that, :attr:`MailError.relay_down` says whether the relay
itself is the problem (down, unreachable, refusing herald's login or session): then no recipient is to
blame, and the delivery engine holds all sending and probes the relay instead of burning anyone's budget.

=====================================================  ==========================  ==========
failure                                                type                        relay_down
=====================================================  ==========================  ==========
refused / reset / closed connection, DNS failure       MailConnectionError         yes
no answer within ``smtp_timeout`` (any command)        MailTimeoutError            yes
TLS handshake failure (connect or STARTTLS)            MailConnectionError         yes
certificate rejected, AUTH refused, no STARTTLS/AUTH   MailConfigError             yes
421 to the greeting, EHLO, MAIL, RCPT or DATA          MailConnectionError         yes
4xx to MAIL FROM (names no recipient)                  TransientMailError          yes
450 / 451 / 452 to RCPT or DATA                        TransientMailError          no
5xx to RCPT or DATA, bad envelope, header injection    PermanentMailError          no
=====================================================  ==========================  ==========

:func:`classify` translates smtplib, socket and ssl exceptions at the boundary so nothing above
``herald.mail`` ever sees them.
"""

from __future__ import annotations

import smtplib
import ssl

__all__ = [
    "MailConfigError",
    "MailConnectionError",
    "MailError",
    "MailTimeoutError",
    "PermanentMailError",
    "TransientMailError",
    "classify",
]

# Replies that mean "your credentials or your setup", whatever command they answer.
_AUTH_CODES = frozenset({530, 534, 535, 538})


class MailError(Exception):
    """A message could not be delivered.

    ``code`` is the server's reply code when there was one, ``reply`` its reply text (never credentials),
    ``recipient`` the envelope recipient concerned, if the failure is about one.
    """

    #: The default of :attr:`relay_down` for the class; an instance may override it.
    _relay_down_default = False

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        reply: str = "",
        recipient: str | None = None,
        relay_down: bool | None = None,
    ) -> None:
        # Only the message goes into args, so the default pickling (args + __dict__) round-trips.
        super().__init__(message)
        self.code = code
        self.reply = reply
        self.recipient = recipient
        self._relay_down = relay_down

    @property
    def relay_down(self) -> bool:
        """True when the relay itself is the problem and no recipient should be blamed.

        Connection failures, timeouts, TLS failures, 421 and herald's own mail configuration (AUTH
        refused, sender refused) are relay-level; a 4xx or 5xx reply about one recipient is not.
        """
        if self._relay_down is not None:
            return self._relay_down
        return self._relay_down_default

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, code={self.code!r}, recipient={self.recipient!r})"


class TransientMailError(MailError):
    """Worth retrying later: the server or the network may recover (4xx, outages, timeouts)."""


class PermanentMailError(MailError):
    """Retrying cannot help this message or recipient (5xx such as 550 unknown user, 552, 554)."""


class MailConnectionError(TransientMailError, ConnectionError):
    """The connection failed: refused, reset, dropped, closed with 421, or the server spoke garbage."""

    _relay_down_default = True


class MailTimeoutError(MailConnectionError, TimeoutError):
    """The server accepted the connection but did not answer within ``smtp_timeout``."""


class MailConfigError(TransientMailError):
    """herald's own mail settings are wrong: AUTH rejected, STARTTLS or AUTH not offered, sender refused.

    The server answers 5xx to these, but the fault lies with herald's configuration, not with the message
    or the recipient. Treating them as permanent would fail every pending recipient for good because of
    one wrong password; as transient, deliveries wait (and the admin sees the error) until the
    configuration is fixed, then go out.
    """

    _relay_down_default = True


def classify(exc: BaseException, *, recipient: str | None = None) -> MailError:
    """Translate an smtplib, socket or ssl exception into herald's error tree.

    ``recipient`` is attached to the result when the exception does not name one itself. A
    :class:`MailError` is returned unchanged; an exception of an unknown kind becomes a plain
    :class:`TransientMailError`, so an unforeseen failure is retried rather than dropped.
    """
    if isinstance(exc, MailError):
        return exc
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return _recipients_refused(exc, recipient)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        code, reply = _reply(exc)
        return MailConfigError(f"SMTP authentication failed: {code} {reply}", code=code, reply=reply)
    if isinstance(exc, smtplib.SMTPSenderRefused):
        code, reply = _reply(exc)
        if 500 <= code <= 599:
            # The envelope sender is herald's setting: every message would be refused the same way.
            return MailConfigError(
                f"sender {exc.sender} refused: {code} {reply}", code=code, reply=reply, recipient=recipient
            )
        error = from_reply(code, reply, f"sender {exc.sender} refused", recipient=recipient)
        # MAIL FROM names no recipient: a 4xx to it (local problem, out of storage) is the relay's.
        error._relay_down = True
        return error
    if isinstance(exc, smtplib.SMTPConnectError | smtplib.SMTPHeloError):
        # A refused greeting or EHLO says nothing about the message: the server is not serving us now.
        code, reply = _reply(exc)
        if _valid_code(code) is None:
            return MailConnectionError(
                f"malformed SMTP reply (is this an SMTP server?): {reply!r}", reply=reply, recipient=recipient
            )
        return MailConnectionError(
            f"SMTP server refused the session: {code} {reply}",
            code=_valid_code(code),
            reply=reply,
            recipient=recipient,
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        if isinstance(exc.smtp_error, str):
            # smtplib made this one up itself (an over-long reply line), the server sent no code.
            return MailConnectionError(f"malformed SMTP reply: {exc.smtp_error}", recipient=recipient)
        code, reply = _reply(exc)
        return from_reply(code, reply, "SMTP server refused the message", recipient=recipient)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return MailConfigError(f"SMTP server does not support what herald needs: {exc}")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        if caused_by_timeout(exc):
            return MailTimeoutError("SMTP server did not answer in time", recipient=recipient)
        return MailConnectionError(f"SMTP server disconnected: {exc}", recipient=recipient)
    if isinstance(exc, smtplib.SMTPException):
        return TransientMailError(f"SMTP error: {exc}", recipient=recipient)
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = getattr(exc, "verify_message", None) or exc
        return MailConfigError(f"SMTP server certificate rejected: {detail}")
    if isinstance(exc, TimeoutError):
        return MailTimeoutError("SMTP server did not answer in time", recipient=recipient)
    if isinstance(exc, ssl.SSLError):
        detail = getattr(exc, "reason", None) or exc
        return MailConnectionError(f"TLS error: {detail}", recipient=recipient)
    if isinstance(exc, OSError):
        return MailConnectionError(f"cannot reach SMTP server: {exc.strerror or exc}", recipient=recipient)
    return TransientMailError(f"unexpected mail error: {type(exc).__name__}: {exc}", recipient=recipient)


def from_reply(code: int, reply: str, what: str, *, recipient: str | None = None) -> MailError:
    """The error for a negative SMTP reply: 4xx transient, 5xx permanent, 421 a closed connection."""
    message = f"{what}: {code} {reply}"
    if code in _AUTH_CODES:
        return MailConfigError(message, code=code, reply=reply, recipient=recipient)
    if code == 421:
        return MailConnectionError(message, code=code, reply=reply, recipient=recipient)
    if 400 <= code <= 499:
        return TransientMailError(message, code=code, reply=reply, recipient=recipient)
    if 500 <= code <= 599:
        return PermanentMailError(message, code=code, reply=reply, recipient=recipient)
    # Anything else (smtplib reports an unparsable code as -1) is a protocol failure, not a verdict.
    return MailConnectionError(
        f"{what}: malformed SMTP reply {reply!r}", code=_valid_code(code), reply=reply, recipient=recipient
    )


def decode_reply(reply: bytes | str) -> str:
    """Server reply text as str; servers may send any bytes, which must not crash the error path."""
    if isinstance(reply, bytes):
        return reply.decode("utf-8", errors="replace")
    return reply


def _reply(exc: smtplib.SMTPResponseException) -> tuple[int, str]:
    return exc.smtp_code, decode_reply(exc.smtp_error)


def _valid_code(code: int) -> int | None:
    return code if 200 <= code <= 599 else None


def _recipients_refused(exc: smtplib.SMTPRecipientsRefused, recipient: str | None) -> MailError:
    refused = exc.recipients
    if recipient not in refused:
        recipient = next(iter(refused), recipient)
    if recipient not in refused:
        return TransientMailError("SMTP server refused the recipients", recipient=recipient)
    code, reply = refused[recipient]
    return from_reply(code, decode_reply(reply), f"recipient {recipient} refused", recipient=recipient)


def caused_by_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception in its chain is a timeout.

    smtplib turns a socket timeout into SMTPServerDisconnected; the original is in the chain.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, TimeoutError):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False
