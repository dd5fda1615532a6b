"""Make user-typed text safe for mail headers and bodies.

The Python on these machines predates the email-package fixes for header injection: a value holding a line
break, or an RFC 2047 encoded word that *decodes* to one (``=?utf-8?q?=0D=0ABcc:...?=``), is written out as
extra header lines. So every string that reaches a header goes through :func:`header_text` first: control
characters and every kind of line break become spaces, invisible format characters go, whitespace is
collapsed, the ``=?`` that opens an encoded word is broken up, and the length is bounded.
"""

from __future__ import annotations

import re
import unicodedata

from herald.tracker import validate

__all__ = [
    "DISPLAY_NAME_MAX",
    "HEADER_MAX",
    "SUBJECT_MAX",
    "address_key",
    "body_text",
    "display_name",
    "header_text",
    "is_safe_address",
    "label",
    "subject",
]

SUBJECT_MAX = 200
DISPLAY_NAME_MAX = 100
HEADER_MAX = 200
BODY_MAX = 65_535
ELLIPSIS = "\u2026"

# Zero-width (non-)joiners are the only format characters real text needs (Persian, Indic scripts, emoji
# sequences); the others (bidi overrides, zero-width spaces, tag characters, BOM) only serve to deceive.
_KEEP_FORMAT = frozenset({0x200C, 0x200D})
# Beyond this code point results are computed but not cached, so hostile input cannot grow the caches.
_CACHE_LIMIT = 0x3100


class _Table(dict[int, int | str | None]):
    """A lazily filled ``str.translate`` table deciding, per code point, keep / replace / drop."""

    def __init__(self, line_break: str) -> None:
        super().__init__()
        self._line_break = line_break

    def _decide(self, cp: int) -> int | str | None:
        ch = chr(cp)
        category = unicodedata.category(ch)
        if ch == "\t":
            return " " if self._line_break == " " else cp
        if category in ("Cc", "Zl", "Zp"):
            # Line and paragraph separators, NEL, CR, LF, VT, FF and the C0/C1 controls.
            return self._line_break if ch in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029" else " "
        if category == "Cs" or (category == "Cf" and cp not in _KEEP_FORMAT):
            return None
        return cp

    def __missing__(self, cp: int) -> int | str | None:
        result = self._decide(cp)
        if cp < _CACHE_LIMIT:
            self[cp] = result
        return result


_HEADER_TABLE = _Table(" ")
_BODY_TABLE = _Table("\n")
_SPACES_BEFORE_NEWLINE = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def _bound(text: str, max_len: int) -> str:
    if len(text) <= max_len:
        return text
    return text[: max_len - 1].rstrip() + ELLIPSIS


def header_text(value: object, max_len: int = HEADER_MAX) -> str:
    """One safe header line: no control characters or line breaks, collapsed whitespace, no encoded-word
    opener, at most ``max_len`` characters (an ellipsis marks a cut)."""
    text = "" if value is None else str(value)
    text = " ".join(text.translate(_HEADER_TABLE).split())
    # "= ?" cannot start an encoded word, so the email package has nothing to decode into a line break.
    text = text.replace("=?", "= ?")
    return _bound(text, max_len)


def subject(value: object) -> str:
    """A mail subject: :func:`header_text` bounded to :data:`SUBJECT_MAX` characters."""
    return header_text(value, SUBJECT_MAX)


# RFC 5322 specials that give an address list its structure. This Python drops the quotes around a long
# display name when it folds the header, so a name holding "<evil@example.org>, " would become an address of
# its own; without these characters a name can only ever be words.
_ADDRESS_SPECIALS = re.compile(r'[<>()\[\]:;@\\,"]+')


def display_name(value: object, max_len: int = DISPLAY_NAME_MAX) -> str:
    """A display name for From/To: :func:`header_text` without address specials (``<>()[]:;@\\,"``),
    bounded to ``max_len`` characters."""
    text = _ADDRESS_SPECIALS.sub(" ", header_text(value, 10 * max_len))
    return header_text(text, max_len)


def label(value: object) -> str:
    """A lower-case ``[a-z0-9-]`` label (List-Id parts); empty input gives ``x``."""
    text = re.sub(r"[^a-z0-9-]+", "-", str(value).lower()).strip("-")
    return text[:40].strip("-") or "x"


def body_text(value: object, max_len: int = BODY_MAX) -> str:
    """User text for a mail body: line breaks normalized to ``\\n``, other controls and deceptive format
    characters removed, trailing spaces and long runs of blank lines trimmed, length bounded."""
    text = "" if value is None else str(value)
    text = text.replace("\r\n", "\n").translate(_BODY_TABLE)
    text = _SPACES_BEFORE_NEWLINE.sub("\n", text)
    text = _MANY_NEWLINES.sub("\n\n", text).strip()
    return _bound(text, max_len)


def is_safe_address(address: object) -> bool:
    """True if ``address`` is one plain ASCII mailbox that can go into a header as is.

    The very grammar the tracker validates input with (:func:`herald.tracker.validate.address_problem`),
    so an address the API accepted is never one the notifier refuses.
    """
    return validate.is_mailable_address(address)


def address_key(address: str) -> str:
    """The form under which two addresses count as the same mailbox (case-insensitive)."""
    return address.strip().lower()
