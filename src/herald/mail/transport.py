"""The mail seam: one method that hands one message to one recipient.

Everything above ``herald.mail`` sees only :class:`Transport` and :class:`Receipt`; SMTP and the built-in
mailbox sit behind it. A message comes either as an :class:`~email.message.EmailMessage` (:meth:`send`,
which serializes and checks it) or as bytes already serialized and checked once by the caller
(:meth:`send_bytes`, the delivery engine's hot path: no email-package work per send).

One recipient per call: herald writes every recipient their own message (To: them alone), and the
envelope recipient is passed explicitly, never derived from the headers, so a Cc or Bcc header can
never widen who receives a message.
"""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass
from email.message import EmailMessage
from types import TracebackType
from typing import Protocol, Self

from herald.mail.errors import PermanentMailError

__all__ = ["Receipt", "Transport", "check_envelope", "needs_smtputf8", "serialize"]


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the server said when it accepted one message for one recipient."""

    recipient: str
    code: int
    reply: str
    message_id: str | None


class Transport(Protocol):
    """Delivers ready-built messages. Implementations subclass this to inherit :meth:`send` (serialize,
    then :meth:`send_bytes`) and context-manager support."""

    def send(self, message: EmailMessage, sender: str, recipient: str) -> Receipt:
        """Deliver ``message`` to ``recipient`` alone, with ``sender`` as the envelope sender: serialized
        and header-checked, then handed to :meth:`send_bytes`.

        Raises a :class:`~herald.mail.errors.MailError`: transient or permanent, as its type says.
        """
        check_envelope(sender, recipient)
        utf8 = needs_smtputf8(sender, recipient)
        raw = serialize(message, utf8=utf8)
        return self.send_bytes(raw, sender, recipient, message_id=message_id(message), utf8=utf8)

    def send_bytes(
        self,
        raw: bytes,
        sender: str,
        recipient: str,
        *,
        message_id: str | None = None,
        utf8: bool = False,
    ) -> Receipt:
        """Deliver ``raw``, a complete message with CRLF line endings, to ``recipient`` alone.

        ``raw`` must already be serialized and header-checked (:func:`serialize` does both); it goes out
        unchanged. ``utf8`` says it was serialized with raw UTF-8 headers and needs SMTPUTF8 (a non-ASCII
        envelope address needs it anyway). ``message_id`` is only copied into the receipt. The envelope is
        checked as in :meth:`send`.
        """
        ...

    def close(self) -> None:
        """Release the connection or files; a later :meth:`send` opens them again."""
        ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# The check that Python 3.12.5/3.11.10 added as ``policy.verify_generated_headers``: after folding, a
# line break must be followed by whitespace, otherwise a header value has started a header of its own.
# The Python on herald's machines predates that fix, so herald checks for itself.
_NEWLINE_WITHOUT_FWSP = re.compile(rb"\r\n[^ \t]|\r[^ \n\t]|\n[^ \t]")
# A bare address in an SMTP command: no spaces, angle brackets or control characters (CR/LF would
# inject a command).
_BAD_ADDRESS_CHAR = re.compile(r"[\x00-\x20\x7f<>]")


def serialize(message: EmailMessage, *, utf8: bool = False) -> bytes:
    """The message as SMTP DATA bytes (CRLF line endings), refusing a header that would inject another.

    ``utf8`` serializes headers as raw UTF-8 (``policy.SMTPUTF8``), for servers that accepted SMTPUTF8.
    """
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    for part in message.walk():
        for name, value in part.raw_items():
            folded = policy.fold_binary(name, value)
            if _NEWLINE_WITHOUT_FWSP.search(folded.removesuffix(b"\r\n")):
                raise PermanentMailError(
                    f"header {name!r} contains a line break that would start a new header"
                )
    return message.as_bytes(policy=policy)


def needs_smtputf8(sender: str, recipient: str, utf8: bool = False) -> bool:
    """Whether a send needs SMTPUTF8: UTF-8 headers (``utf8``) or a non-ASCII envelope address."""
    return utf8 or not (sender.isascii() and recipient.isascii())


def check_envelope(sender: str, recipient: str) -> None:
    """Refuse envelope addresses that are not bare addresses; ``sender`` may be empty (null sender)."""
    if not recipient or _BAD_ADDRESS_CHAR.search(recipient):
        raise PermanentMailError(f"invalid envelope recipient {recipient!r}", recipient=recipient)
    if _BAD_ADDRESS_CHAR.search(sender):
        raise PermanentMailError(f"invalid envelope sender {sender!r}", recipient=recipient)


def message_id(message: EmailMessage) -> str | None:
    """The Message-ID header as text, or None."""
    value = message.get("Message-ID")
    if value is None:
        return None
    return str(value).strip() or None
