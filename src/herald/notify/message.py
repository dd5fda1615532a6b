"""One ``EmailMessage`` per recipient: headers for threading, list handling and filtering, and the bodies.

Every user-typed string reaches a header through :mod:`herald.notify.sanitize`, and every built message
passes :func:`herald.notify.headers.check_headers` before it is handed on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

from herald.config import Settings
from herald.notify import sanitize
from herald.notify.headers import POLICY, check_headers
from herald.notify.unsubscribe import unsubscribe_token

__all__ = [
    "MailContext",
    "MessageBuilder",
    "UnsubscribeLinks",
    "build_message",
    "from_address",
    "list_id",
    "mail_domain",
    "message_id_for",
    "thread_root_id",
]

NOREPLY = "noreply"
UNSUBSCRIBE_MAILBOX = "unsubscribe"
# The headers' policy, but bodies in 7bit-safe encodings: no reliance on the server's 8BITMIME.
MESSAGE_POLICY = POLICY.clone(cte_type="7bit")


def mail_domain(settings: Settings) -> str:
    """The domain used in From, Message-ID and List-Id (``base_url``'s host when not configured)."""
    return settings.mail_domain or urlsplit(settings.base_url).hostname or "localhost"


def thread_root_id(artifact_id: int, domain: str) -> str:
    """The Message-ID every mail about one artifact replies to, so that clients thread them together.

    No mail carries it as its own Message-ID: clients thread on References to a missing root just fine,
    and the creation mail stays an ordinary reply like the others.
    """
    return f"<herald.artifact{artifact_id}@{domain}>"


def message_id_for(changeset_id: int, address: str, domain: str) -> str:
    """The Message-ID of one changeset's mail to one address: the same on every retry, so a receiver can
    drop a duplicate left by a crash between sending and recording."""
    digest = hashlib.sha1(sanitize.address_key(address).encode(), usedforsecurity=False).hexdigest()[:16]
    return f"<herald.cs{changeset_id}.{digest}@{domain}>"


def list_id(tracker_id: int, project_name: str, domain: str) -> str:
    """RFC 2919 List-Id of a tracker: ``<tracker-<id>.<project>.<domain>>``."""
    return f"<tracker-{tracker_id}.{sanitize.label(project_name)}.{domain}>"


@dataclass(frozen=True)
class MailContext:
    """What every message about one changeset shares."""

    domain: str
    base_url: str
    from_name: str
    changeset_id: int
    artifact_id: int
    tracker_id: int
    tracker_name: str
    project_name: str
    author_name: str
    created_at: datetime


@dataclass(frozen=True)
class UnsubscribeLinks:
    """A recipient's one-click (https) unsubscribe link.

    ``mailto`` is kept for callers that still read it but is not advertised: herald has no inbound mail
    to act on it, and a link that goes nowhere is worse than none (issue 9, defect 12). The https link
    is the RFC 8058 One-Click one that ``List-Unsubscribe-Post`` names.
    """

    url: str
    mailto: str

    @property
    def header_value(self) -> str:
        """The ``List-Unsubscribe`` value: the https link only."""
        return f"<{self.url}>"

    @classmethod
    def make(cls, secret: str, user_id: int, mc: MailContext) -> UnsubscribeLinks:
        """The links for ``user_id`` and this changeset's artifact."""
        token = unsubscribe_token(secret, user_id, mc.artifact_id)
        return cls(
            url=f"{mc.base_url.rstrip('/')}/unsubscribe/{token}",
            mailto=f"mailto:{UNSUBSCRIBE_MAILBOX}@{mc.domain}?subject=unsubscribe%20{token}",
        )


def from_address(author_name: str, from_name: str, domain: str) -> Address:
    """``"<author> (<from_name>)" <noreply@domain>``, sanitized."""
    address = f"{NOREPLY}@{domain}"
    suffix = sanitize.display_name(from_name)
    suffix = f" ({suffix})" if suffix else ""
    # Sized so that 'From: "<name>" <address>' fits one line: unfolded, the quotes (and so the suffix's
    # parentheses) survive this Python's folding. A longer name still cannot spoof (see display_name).
    budget = 78 - len('From: "" <>') - len(address) - len(suffix)
    author = sanitize.display_name(author_name, max(budget, 12))
    return Address(display_name=f"{author}{suffix}", addr_spec=address)


class MessageBuilder:
    """Builds the messages of one changeset. Headers shared by all of them (and each distinct subject) are
    parsed and checked once: with the email package, header parsing is most of a message's cost."""

    def __init__(self, mc: MailContext) -> None:
        self.mc = mc
        make = MESSAGE_POLICY.header_factory
        at = mc.created_at if mc.created_at.tzinfo else mc.created_at.replace(tzinfo=UTC)
        root = thread_root_id(mc.artifact_id, mc.domain)
        self._date = make("Date", format_datetime(at))
        self._from = make("From", from_address(mc.author_name, mc.from_name, mc.domain))
        self._thread = [
            make("In-Reply-To", root),
            make("References", root),
            make("List-Id", list_id(mc.tracker_id, mc.project_name, mc.domain)),
        ]
        self._post = make("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
        self._tail = [
            make("Auto-Submitted", "auto-generated"),
            make("X-Auto-Response-Suppress", "All"),
            make("X-Herald-Project", sanitize.header_text(mc.project_name, 64)),
            make("X-Herald-Tracker", sanitize.header_text(mc.tracker_name, 64)),
            make("X-Herald-Artifact-ID", str(int(mc.artifact_id))),
            make("X-Herald-Changeset-ID", str(int(mc.changeset_id))),
        ]
        self._subjects: dict[str, Any] = {}
        self._checked: set[int] = set()
        self._trust([self._date, self._from, *self._thread, self._post, *self._tail])

    def _trust(self, headers: list[Any]) -> None:
        probe = EmailMessage(policy=MESSAGE_POLICY)
        for header in headers:
            probe[header.name] = header
        check_headers(probe)
        self._checked.update(id(h) for h in headers)

    def _subject(self, subject: str) -> Any:
        header = self._subjects.get(subject)
        if header is None:
            header = MESSAGE_POLICY.header_factory("Subject", sanitize.subject(subject))
            self._trust([header])
            self._subjects[subject] = header
        return header

    def build(
        self,
        *,
        address: str,
        reason: str,
        subject: str,
        text: str,
        html: str | None,
        to_name: str = "",
        unsubscribe: UnsubscribeLinks | None = None,
    ) -> EmailMessage:
        """The message for one recipient. ``subject``, ``text`` and ``html`` come from the renderer.

        Raises ``ValueError`` if ``address`` is not a safe mailbox (the recipient rules never pass one).
        """
        if not sanitize.is_safe_address(address):
            raise ValueError("refusing to address a mail to an unsafe address")
        mc = self.mc
        msg = EmailMessage(policy=MESSAGE_POLICY)
        msg["Subject"] = self._subject(subject)
        msg["Date"] = self._date
        msg["From"] = self._from
        msg["To"] = Address(display_name=sanitize.display_name(to_name), addr_spec=address)
        msg["Message-ID"] = message_id_for(mc.changeset_id, address, mc.domain)
        for header in self._thread:
            msg[header.name] = header
        if unsubscribe is not None:
            msg["List-Unsubscribe"] = unsubscribe.header_value
            msg["List-Unsubscribe-Post"] = self._post
        for header in self._tail:
            msg[header.name] = header
        msg["X-Herald-Reason"] = sanitize.label(reason)
        msg.set_content(text, charset="utf-8")
        if html is not None:
            msg.add_alternative(html, subtype="html", charset="utf-8")
        check_headers(msg, trusted=self._checked)
        return msg


def build_message(mc: MailContext, **recipient: Any) -> EmailMessage:
    """One message without a shared :class:`MessageBuilder` (same keyword arguments as its ``build``)."""
    return MessageBuilder(mc).build(**recipient)
