"""Mail transports: SMTP, or the built-in mailbox when no ``smtp_host`` is set.

``herald.mail`` receives ready-built :class:`email.message.EmailMessage` objects, or their bytes already
serialized (``send_bytes``), and delivers each to one envelope recipient: alone (:func:`make_transport`)
or through a bounded, rate-limited :class:`RelayPool` shared by threads (:func:`make_pool`). It knows
nothing of trackers or queues. Failures are :class:`MailError` subclasses whose type says whether to
retry (:class:`TransientMailError`) or not (:class:`PermanentMailError`), and whose ``relay_down`` says
whether the relay itself, not the recipient, is at fault.
"""

from __future__ import annotations

from herald.config import Settings
from herald.mail.errors import (
    MailConfigError,
    MailConnectionError,
    MailError,
    MailTimeoutError,
    PermanentMailError,
    TransientMailError,
    classify,
)
from herald.mail.mailbox import MailboxTransport, MailSummary
from herald.mail.pool import RelayPool, make_pool
from herald.mail.ratelimit import RateLimiter
from herald.mail.smtp import SmtpTransport
from herald.mail.transport import Receipt, Transport

__all__ = [
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
    "TransientMailError",
    "Transport",
    "classify",
    "make_pool",
    "make_transport",
]


def make_transport(settings: Settings) -> Transport:
    """The transport the settings ask for: SMTP when ``smtp_host`` is set, else the built-in mailbox."""
    if settings.smtp_host:
        return SmtpTransport(settings)
    return MailboxTransport(settings)
