"""Ready-built messages, as herald's notifier would hand them to a transport."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

SENDER = "herald@tracker.example.org"


def build_message(
    to: str = "bob@example.org",
    subject: str = "[bug #42] Crash on save",
    body: str = "Alice changed the status to Open.\n",
    **headers: str,
) -> EmailMessage:
    """A notification with From, To, Subject, Date and Message-ID; extra headers by keyword (Cc=...)."""
    message = EmailMessage()
    message["From"] = f"Tracker <{SENDER}>"
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="tracker.example.org")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message
