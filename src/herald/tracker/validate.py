"""Input checks shared by the tracker services. Each raises InvalidInput naming the offending part."""

from __future__ import annotations

import difflib
import math
import re
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from herald.tracker.errors import InvalidInput

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# The one address grammar of herald, used at input here and by notify.sanitize before a header is written:
# a plain ASCII addr-spec, a dot-atom local part (no leading, trailing or doubled dot) and a dotted domain
# of letter/digit/hyphen labels. Quoted local parts, address literals and internationalized addresses are
# refused: they need quoting or SMTPUTF8 that herald does not negotiate, and each is a way to smuggle text
# into a header. An address accepted here is an address herald can mail.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_RE = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@{_LABEL}(?:\.{_LABEL})+", re.ASCII)
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029\x85]")
LINE_BREAK_RE = re.compile(r"[\r\n]")
MAX_STRING = 255
MAX_TEXT = 65_535
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidInput(
            f"{what} must be 1-64 characters of lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            what,
        )
    return value


def address_problem(value: Any) -> str | None:
    """Why ``value`` is not an address herald can mail, or None if it is one."""
    if not isinstance(value, str):
        return "must be a string"
    if not 3 <= len(value) <= 254:
        return "must be 3 to 254 characters"
    # ASCII only and no encoded-word marker: herald sends without SMTPUTF8, and "=?" in an address is
    # how header-injection payloads smuggle line breaks past the email package on these machines.
    if not value.isascii():
        return "must be ASCII (internationalized addresses are not supported)"
    if "=?" in value:
        return "must not contain '=?'"
    if not EMAIL_RE.fullmatch(value):
        local = value.rpartition("@")[0]
        if ".." in local or local.startswith(".") or local.endswith("."):
            return "must not start or end its local part with a dot, nor hold two dots in a row"
        return "must be a plain address such as jane@example.org"
    if len(value.rsplit("@", 1)[0]) > 64:
        return "must have a local part (before the @) of at most 64 characters"
    return None


def is_mailable_address(value: Any) -> bool:
    """True if ``value`` is one plain ASCII mailbox that herald can put into a header as is."""
    return address_problem(value) is None


def email(value: Any, what: str = "email") -> str:
    problem = address_problem(value)
    if problem is not None:
        raise InvalidInput(f"{what} {problem}, e.g. jane@example.org", what)
    return value


def line(value: Any, what: str, *, max_len: int = 200, allow_empty: bool = True) -> str:
    """One line of user text: no control characters or line breaks, bounded length."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string", what)
    if CONTROL_RE.search(value) or LINE_BREAK_RE.search(value):
        raise InvalidInput(f"{what} must be one line without control characters", what)
    if len(value) > max_len:
        raise InvalidInput(f"{what} must be at most {max_len} characters", what)
    if not allow_empty and not value.strip():
        raise InvalidInput(f"{what} must not be empty", what)
    return value


def text(value: Any, what: str, *, max_len: int = MAX_TEXT) -> str:
    """Multi-line user text: line breaks and tabs allowed, other control characters not."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string", what)
    if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", value):
        raise InvalidInput(f"{what} must not contain control characters", what)
    if len(value) > max_len:
        raise InvalidInput(f"{what} must be at most {max_len} characters", what)
    return value


def boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be true or false", what)
    return value


def choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidInput(f"{what} must be one of {', '.join(choices)}", what)
    return value


_TIMEZONES: frozenset[str] | None = None


def timezone(value: Any, what: str = "timezone") -> str:
    global _TIMEZONES
    if _TIMEZONES is None:
        _TIMEZONES = frozenset(available_timezones()) | {"UTC"}
    if not isinstance(value, str) or value not in _TIMEZONES:
        raise InvalidInput(f"{what} must be an IANA time zone such as Europe/Paris", what)
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"{what} must be an IANA time zone such as Europe/Paris", what) from None
    return value


def integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not INT_MIN <= value <= INT_MAX:
        raise InvalidInput(f"{what} must be a whole number", what)
    return value


def number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number", what)
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        raise InvalidInput(f"{what} must be a finite number", what)
    return float(value)


def iso_date(value: Any, what: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise InvalidInput(f"{what} must be a date as YYYY-MM-DD", what)
    try:
        date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{what} must be a real date as YYYY-MM-DD", what) from None
    return value


def positive_id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= INT_MAX:
        raise InvalidInput(f"{what} must be a positive id", what)
    return value


def mapping(value: Any, what: str, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:
    """A JSON object with only the allowed keys and every required one."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be an object", what)
    unknown = sorted(map(str, set(value) - allowed))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        raise InvalidInput(
            f"{what} has unknown key(s): {', '.join(hints)}; known keys: {', '.join(sorted(allowed))}", what
        )
    missing = sorted(required - set(value))
    if missing:
        raise InvalidInput(f"{what} is missing: {', '.join(missing)}", what)
    return value
