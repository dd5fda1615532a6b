"""The email policy herald builds messages with, and the last check before a message leaves the notifier.

Two problems of the standard email package are handled here:

- Machine headers (Message-ID, References, List-Id, List-Unsubscribe...) longer than a line were turned
  into RFC 2047 encoded words, which no client decodes in those headers: an unsubscribe link would die.
  :class:`VerbatimHeader` writes them as given, folded after commas only.
- On this Python, text that survived into a header can still come out as several header lines. After a
  message is built, :func:`check_headers` folds every header as the sender will and refuses any line
  that would start a new header.
"""

from __future__ import annotations

import email.policy
from collections.abc import Collection
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from typing import Any

__all__ = ["POLICY", "HeaderError", "VerbatimHeader", "check_folded", "check_headers"]

SMTP_LINE_MAX = 998  # RFC 5322 2.1.1, without the CRLF


class HeaderError(ValueError):
    """A header would not come out as exactly one header: a bug upstream, never sent."""


class VerbatimHeader:
    """An ASCII header value written exactly as given, folded only after ``", "``."""

    max_count = None

    @classmethod
    def parse(cls, value: Any, kwds: dict[str, Any]) -> None:
        """Take the value as is (no RFC 2047 decoding); refuse anything but printable ASCII."""
        text = str(value)
        if not text.isascii() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise HeaderError(f"verbatim header value must be printable ASCII: {text!r}")
        kwds["decoded"] = text
        kwds["parse_tree"] = None

    def fold(self, *, policy: email.policy.Policy) -> str:
        """``Name: value`` folded after commas to the policy's line length, never encoded."""
        name, value = self.name, str(self)  # type: ignore[attr-defined]
        limit = policy.max_line_length or SMTP_LINE_MAX
        parts = value.split(", ")
        lines = [f"{name}: {parts[0]}"]
        for part in parts[1:]:
            if len(lines[-1]) + 2 + len(part) > limit:
                lines[-1] += ","
                lines.append(f" {part}")
            else:
                lines[-1] += f", {part}"
        return policy.linesep.join(lines) + policy.linesep


VERBATIM = (
    "message-id",
    "in-reply-to",
    "references",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "auto-submitted",
    "x-auto-response-suppress",
    "x-herald-artifact-id",
    "x-herald-changeset-id",
    "x-herald-reason",
)


class _CachingRegistry(HeaderRegistry):
    """The standard registry builds a new class on every lookup (several per header set); the classes
    are stateless, so build each once. About a sixth of the time spent building a message."""

    def __init__(self) -> None:
        super().__init__(base_class=BaseHeader)
        self._classes: dict[str, type] = {}

    def map_to_type(self, name: str, cls: type) -> None:
        super().map_to_type(name, cls)
        self._classes.pop(name.lower(), None)

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


_registry = _CachingRegistry()
for _name in VERBATIM:
    _registry.map_to_type(_name, VerbatimHeader)

# policy.SMTP (CRLF line ends, lines folded at 78) with the verbatim headers above. Messages keep this
# policy, so whoever serializes or sends them (smtplib's send_message) uses the same folding.
POLICY = email.policy.SMTP.clone(header_factory=_registry)


def check_headers(message: EmailMessage, trusted: Collection[int] = ()) -> None:
    """Raise :class:`HeaderError` unless every top-level header folds into exactly one header.

    ``trusted`` holds the ``id()`` of header objects already checked (shared by many messages).
    """
    policy = message.policy
    for name, value in message.items():
        if id(value) in trusted:
            continue
        check_folded(name, policy.fold(name, value), policy.linesep)


def check_folded(name: str, folded: str, linesep: str = "\r\n") -> None:
    """Raise :class:`HeaderError` unless ``folded`` (``Name: value`` as it goes on the wire) is exactly
    one header: it starts with its name and every continuation line starts with white space."""
    lines = folded.split(linesep)
    if lines[-1] != "" or not lines[0].lower().startswith(name.lower() + ":"):
        raise HeaderError(f"header {name} does not fold into one header")
    for i, line in enumerate(lines[:-1]):
        bad = (
            "\r" in line
            or "\n" in line
            or "\0" in line
            or len(line) > SMTP_LINE_MAX
            or (i > 0 and line[:1] not in (" ", "\t"))
        )
        if bad:
            raise HeaderError(f"header {name} would break out of its line")
