"""Each recipient's message straight to the bytes SMTP sends, without an ``EmailMessage`` per recipient.

With the email package, building and serializing a message costs more than sending it: headers are parsed
on assignment and folded again on output, and a random MIME boundary is drawn each time. Here the headers
every recipient of a changeset shares are folded and checked once; per recipient only To, Message-ID,
List-Unsubscribe and the reason are folded (and checked, as :func:`herald.notify.headers.check_headers`
would), and the bodies are quoted-printable by the C codec. The MIME boundary is derived from the
Message-ID, so a retried mail is byte-identical to the first try.

The result reads exactly as :class:`~herald.notify.message.MessageBuilder`'s message does (a test compares
them header by header and part by part).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
from dataclasses import dataclass
from datetime import UTC
from email.headerregistry import Address
from email.utils import format_datetime

from herald.notify import sanitize
from herald.notify.headers import HeaderError, check_folded
from herald.notify.message import (
    MESSAGE_POLICY,
    MailContext,
    UnsubscribeLinks,
    from_address,
    list_id,
    message_id_for,
    thread_root_id,
)

__all__ = ["Wire", "WireBuilder", "boundary_for"]

CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class Wire:
    """One recipient's message, ready for SMTP DATA."""

    address: str
    message_id: str
    raw: bytes


def boundary_for(message_id: str) -> str:
    """A MIME boundary derived from the Message-ID. It starts with ``=_``, which quoted-printable output
    can never contain (``=`` is always followed by hex digits or a line break there)."""
    return "=_herald_" + hashlib.sha1(message_id.encode(), usedforsecurity=False).hexdigest()[:24]


def _fold_value(name: str, value: object) -> bytes:
    header = MESSAGE_POLICY.header_factory(name, value)
    folded = MESSAGE_POLICY.fold(name, header)
    check_folded(name, folded)
    return folded.encode("ascii")


# Folding through the email package is most of a message's cost, and the same values come back change
# after change (the same people, authors, projects, reasons): fold each distinct one once per process.
@functools.lru_cache(maxsize=4096)
def _fold(name: str, value: str) -> bytes:
    return _fold_value(name, value)


@functools.lru_cache(maxsize=8192)
def _fold_to(display_name: str, address: str) -> bytes:
    return _fold_value("To", Address(display_name=display_name, addr_spec=address))


@functools.lru_cache(maxsize=1024)
def _fold_from(author_name: str, from_name: str, domain: str) -> bytes:
    return _fold_value("From", from_address(author_name, from_name, domain))


def _qp(text: str) -> bytes:
    # Lines end in CRLF on the wire; b2a_qp keeps the text's own LF, soft breaks included.
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\r\n", b"\n").replace(b"\n", CRLF)
    return encoded if encoded.endswith(CRLF) else encoded + CRLF


def _part(subtype: str, text: str) -> bytes:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode()
        + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + _qp(text)
    )


class WireBuilder:
    """Builds the wire bytes of one changeset's messages; one instance per changeset (per delivery run)."""

    def __init__(self, mc: MailContext) -> None:
        self.mc = mc
        at = mc.created_at if mc.created_at.tzinfo else mc.created_at.replace(tzinfo=UTC)
        root = thread_root_id(mc.artifact_id, mc.domain)
        self._date = _fold("Date", format_datetime(at))
        self._from = _fold_from(mc.author_name, mc.from_name, mc.domain)
        self._thread = b"".join(
            [
                _fold("In-Reply-To", root),
                _fold("References", root),
                _fold("List-Id", list_id(mc.tracker_id, mc.project_name, mc.domain)),
            ]
        )
        self._post = _fold("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
        self._tail = b"".join(
            [
                _fold("Auto-Submitted", "auto-generated"),
                _fold("X-Auto-Response-Suppress", "All"),
                _fold("X-Herald-Project", sanitize.header_text(mc.project_name, 64)),
                _fold("X-Herald-Tracker", sanitize.header_text(mc.tracker_name, 64)),
                _fold("X-Herald-Artifact-ID", str(int(mc.artifact_id))),
                _fold("X-Herald-Changeset-ID", str(int(mc.changeset_id))),
            ]
        )
        self._subjects: dict[str, bytes] = {}

    def _subject(self, subject: str) -> bytes:
        folded = self._subjects.get(subject)
        if folded is None:
            folded = self._subjects[subject] = _fold_value("Subject", sanitize.subject(subject))
        return folded

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
        delayed: str | None = None,
    ) -> Wire:
        """The bytes of one recipient's message; ``delayed`` (ASCII, e.g. ``"3h12m"``) adds
        ``X-Herald-Delayed``. Raises ``ValueError`` for an unsafe address, ``HeaderError`` for a header
        that would not stay one header."""
        if not sanitize.is_safe_address(address):
            raise ValueError("refusing to address a mail to an unsafe address")
        mc = self.mc
        mid = message_id_for(mc.changeset_id, address, mc.domain)
        head = [
            self._subject(subject),
            self._date,
            self._from,
            _fold_to(sanitize.display_name(to_name), address),
            _fold_value("Message-ID", mid),
            self._thread,
        ]
        if unsubscribe is not None:
            head.append(_fold_value("List-Unsubscribe", unsubscribe.header_value))
            head.append(self._post)
        head.append(self._tail)
        head.append(_fold("X-Herald-Reason", sanitize.label(reason)))
        if delayed is not None:
            if not delayed.isascii() or not delayed.isprintable():
                raise HeaderError("X-Herald-Delayed must be printable ASCII")
            head.append(f"X-Herald-Delayed: {delayed}\r\n".encode())
        head.append(b"MIME-Version: 1.0\r\n")
        if html is None:
            body = _part("plain", text)
        else:
            boundary = boundary_for(mid).encode()
            head.append(b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n')
            body = b"".join(
                [
                    CRLF + b"--" + boundary + CRLF,
                    _part("plain", text),
                    CRLF + b"--" + boundary + CRLF,
                    _part("html", html),
                    CRLF + b"--" + boundary + b"--" + CRLF,
                ]
            )
            return Wire(address, mid, b"".join(head) + CRLF + body)
        return Wire(address, mid, b"".join(head) + body)
