"""The built-in mailbox: with no ``smtp_host``, messages land in a Maildir under ``settings.mailbox_dir``.

Maildir is made for concurrent writers: each message is written under a unique name (time, pid, counter,
host) in ``tmp/`` and then linked into ``new/`` in one step, so several processes can deliver at once and a
reader never sees half a message. Each stored message starts with ``Return-Path`` and ``Delivered-To``, the
envelope, as a local delivery agent writes them; lines end with LF, as is usual on disk.
"""

from __future__ import annotations

import itertools
import mailbox
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from herald.config import Settings
from herald.mail.errors import TransientMailError
from herald.mail.transport import (
    Receipt,
    Transport,
    check_envelope,
    message_id,
)

__all__ = ["AmbiguousKey", "MailSummary", "MailboxTransport", "find_keys", "read_bytes", "resolve_key"]

# mailbox.Maildir numbers the files it creates with a class-wide counter that is not thread-safe, and an
# instance's table of contents is rebuilt on reads: one lock per process covers both.
_LOCK = threading.Lock()
# Keys Maildir makes: "<seconds>.M<micros>P<pid>Q<count>.<host>". Anything with a path separator, a
# leading dot or other odd characters is refused before it reaches the filesystem.
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}")
_KEY_TIME = re.compile(r"(\d+)\.M(\d+)(?:P\d+Q(\d+))?")
_PARSER = BytesParser(policy=policy.default)


@dataclass(frozen=True, slots=True)
class MailSummary:
    """One stored message, as the mailbox list shows it. ``recipient`` is the envelope recipient."""

    key: str
    date: datetime
    sender: str
    recipient: str
    subject: str
    message_id: str | None

    def as_dict(self) -> dict[str, str | None]:
        """JSON-ready, as the CLI and the API show it."""
        return {
            "key": self.key,
            "date": self.date.isoformat(),
            "from": self.sender,
            "to": self.recipient,
            "subject": self.subject,
            "message_id": self.message_id,
        }


class MailboxTransport(Transport):
    """Stores each message in the Maildir ``settings.mailbox_dir`` and reads them back for the CLI and web."""

    def __init__(self, settings: Settings) -> None:
        self._path = Path(settings.mailbox_dir)
        self._maildir: mailbox.Maildir | None = None

    def __repr__(self) -> str:
        return f"MailboxTransport({str(self._path)!r})"

    @property
    def path(self) -> Path:
        """The Maildir directory."""
        return self._path

    def send_bytes(
        self,
        raw: bytes,
        sender: str,
        recipient: str,
        *,
        message_id: str | None = None,
        utf8: bool = False,
    ) -> Receipt:
        """Store ``raw`` as given (after the envelope lines, with LF line ends); the key is in the reply."""
        check_envelope(sender, recipient)
        envelope = f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n".encode()
        data = (envelope + raw).replace(b"\r\n", b"\n")
        try:
            with _LOCK:
                key = self._box().add(data)
        except OSError as exc:
            # The mailbox is herald's relay here: a full or unwritable disk blames no recipient.
            raise TransientMailError(
                f"cannot store the message in {self._path}: {exc.strerror or exc}",
                recipient=recipient,
                relay_down=True,
            ) from exc
        return Receipt(recipient=recipient, code=250, reply=f"stored as {key}", message_id=message_id)

    def probe(self) -> None:
        """Check the Maildir can be opened (created if need be); raises a relay-down :class:`MailError`."""
        try:
            with _LOCK:
                self._box()
        except OSError as exc:
            raise TransientMailError(
                f"cannot open the mailbox {self._path}: {exc.strerror or exc}", relay_down=True
            ) from exc

    def close(self) -> None:
        """Nothing stays open between calls; present for the :class:`Transport` contract."""
        with _LOCK:
            self._maildir = None

    # --- reading ---------------------------------------------------------------------------------------

    def list_messages(
        self, limit: int = 50, offset: int = 0, recipient: str | None = None
    ) -> list[MailSummary]:
        """Summaries, newest first; ``recipient`` keeps only messages delivered to that address."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        keys = self._keys_newest_first()
        if recipient is None:
            # No filter: page on the keys and read only the headers of the messages shown.
            keys, offset = keys[offset : offset + limit], 0
        summaries = (s for s in map(self._summary, keys) if s is not None)
        if recipient is not None:
            wanted = recipient.lower()
            summaries = (s for s in summaries if s.recipient.lower() == wanted)
        return list(itertools.islice(summaries, offset, offset + limit))

    def get_message(self, key: str) -> EmailMessage:
        """The stored message, parsed with ``policy.default``.

        Raises ``ValueError`` for a malformed key and ``KeyError`` when no message has that key.
        """
        _check_key(key)
        try:
            with _LOCK:
                data = self._box().get_bytes(key)
        except FileNotFoundError:  # removed between the lookup and the read
            raise KeyError(key) from None
        message = _PARSER.parsebytes(data)
        assert isinstance(message, EmailMessage)
        return message

    def count(self) -> int:
        """How many messages the mailbox holds."""
        with _LOCK:
            return len(self._box())

    def clear(self) -> int:
        """Delete every message; returns how many were deleted."""
        removed = 0
        with _LOCK:
            box = self._box()
            keys = box.keys()  # a list: iterating a Mailbox itself yields messages, not keys
            for key in keys:
                try:
                    box.remove(key)
                except (KeyError, FileNotFoundError):  # another process removed it first
                    continue
                removed += 1
        return removed

    # --- internals -------------------------------------------------------------------------------------

    def _box(self) -> mailbox.Maildir:
        if self._maildir is None:
            # Maildir creates only the last directory itself; data_dir may not exist yet either.
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._maildir = mailbox.Maildir(self._path, factory=None, create=True)
        return self._maildir

    def _keys_newest_first(self) -> list[str]:
        with _LOCK:
            keys = self._box().keys()
        return sorted(keys, key=_delivery_order, reverse=True)

    def _summary(self, key: str) -> MailSummary | None:
        try:
            with _LOCK:
                fh = self._box().get_file(key)
        except (KeyError, FileNotFoundError):  # removed since it was listed
            return None
        with fh:
            headers = _PARSER.parse(fh, headersonly=True)
        assert isinstance(headers, EmailMessage)
        return MailSummary(
            key=key,
            date=_date(headers, key),
            sender=str(headers.get("From", "")),
            recipient=str(headers.get("Delivered-To") or headers.get("To", "")),
            subject=str(headers.get("Subject", "")),
            message_id=message_id(headers),
        )


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key) or ".." in key:
        raise ValueError(f"not a mailbox key: {key!r}")


def _delivery_order(key: str) -> tuple[int, int, int, str]:
    """Sort key: delivery second, microsecond, then the writer's counter (two messages can share a tick)."""
    match = _KEY_TIME.match(key)
    if match is None:
        return (0, 0, 0, key)
    return (int(match[1]), int(match[2]), int(match[3] or 0), key)


def _date(headers: EmailMessage, key: str) -> datetime:
    """The Date header, or the delivery time that Maildir put in the key."""
    header = headers.get("Date")
    value = getattr(header, "datetime", None)
    if isinstance(value, datetime):
        return value
    seconds, micros, _, _ = _delivery_order(key)
    return datetime.fromtimestamp(seconds + micros / 1e6, tz=UTC)


# --- lookup by prefix and raw reads (the CLI's ``herald mailbox show``) ----------------------------------


class AmbiguousKey(LookupError):
    """A key prefix matches more than one message; ``matches`` are their keys, newest first."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        super().__init__(prefix)
        self.prefix = prefix
        self.matches = matches


def find_keys(box: MailboxTransport, prefix: str) -> list[str]:
    """The keys that start with ``prefix``, newest first (``ValueError`` for a prefix no key could have)."""
    _check_key(prefix)
    return [key for key in box._keys_newest_first() if key.startswith(prefix)]


def resolve_key(box: MailboxTransport, prefix: str) -> str:
    """The one key that is ``prefix`` or starts with it.

    A whole key wins even if it is also the start of another. Raises ``ValueError`` for a malformed
    prefix, ``KeyError`` when nothing matches and :class:`AmbiguousKey` when several do.
    """
    matches = find_keys(box, prefix)
    if prefix in matches or len(matches) == 1:
        return prefix if prefix in matches else matches[0]
    if not matches:
        raise KeyError(prefix)
    raise AmbiguousKey(prefix, matches)


def read_bytes(box: MailboxTransport, key: str) -> bytes:
    """The message exactly as stored (envelope lines first, LF line ends); ``KeyError`` if it is gone."""
    _check_key(key)
    try:
        with _LOCK:
            return box._box().get_bytes(key)
    except FileNotFoundError:  # removed between the lookup and the read
        raise KeyError(key) from None
