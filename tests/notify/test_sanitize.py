"""Header-safe text: every hostile string comes out as one harmless line."""

from __future__ import annotations

import email
import email.policy
import unicodedata
from email.headerregistry import Address
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.notify import sanitize

BREAKS = ["\r\n", "\r", "\n", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\0"]


@pytest.mark.parametrize("brk", BREAKS)
def test_line_breaks_and_nul_become_spaces(brk):
    assert sanitize.header_text(f"Title{brk}Bcc: evil@example.org") == "Title Bcc: evil@example.org"


def test_whitespace_collapses_and_format_characters_go():
    assert sanitize.header_text("  a \t\t b\u00a0 c  ") == "a b c"
    assert sanitize.header_text("pay\u202epal\u200b\ufeff") == "paypal"
    assert sanitize.header_text("a\u200db") == "a\u200db"  # joiners are real text
    assert sanitize.header_text("x\ud800y") == "xy"  # lone surrogates cannot be encoded


def test_encoded_word_openers_are_broken():
    hostile = "=?utf-8?q?a=0D=0ABcc:_evil@example.org?="
    out = sanitize.header_text(hostile)
    assert "=?" not in out
    msg = EmailMessage()
    msg["Subject"] = out
    assert "\n" not in str(msg["Subject"]) and "\r" not in str(msg["Subject"])


def test_subject_is_bounded_with_an_ellipsis():
    out = sanitize.subject("x" * 5000)
    assert len(out) == sanitize.SUBJECT_MAX and out.endswith("\u2026")
    assert sanitize.subject("short") == "short"
    assert len(sanitize.display_name("n" * 500)) == sanitize.DISPLAY_NAME_MAX


def test_none_and_non_strings():
    assert sanitize.header_text(None) == ""
    assert sanitize.header_text(42) == "42"


def test_body_text_keeps_lines_and_drops_controls():
    assert sanitize.body_text("a\r\nb\rc\u2028d\x00e\x07f\tg  \n\n\n\nh") == "a\nb\nc\nd e f\tg\n\nh"
    assert sanitize.body_text("evil\u202etxt.exe") == "eviltxt.exe"
    assert len(sanitize.body_text("y" * 100_000)) == sanitize.BODY_MAX


@pytest.mark.parametrize(
    "address",
    ["jane@example.org", "J.Doe+tag@sub.example.co.uk", "o'hara@example.org"],
)
def test_safe_addresses(address):
    assert sanitize.is_safe_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "jane@example.org\r\nBcc: x@evil.org",
        "jane@example.org, x@evil.org",
        "Jane <jane@example.org>",
        '"jane"@example.org',
        "jane@[127.0.0.1]",
        "jané@example.org",
        "=?utf-8?q?x?=@example.org",
        "jane@-example.org",
        "jane..doe@example.org",
        "root@localhost",  # one grammar with the API's input check: a dotted domain
        "@example.org",
        "jane@",
        "",
        None,
        "a" * 65 + "@example.org",
    ],
)
def test_unsafe_addresses(address):
    assert not sanitize.is_safe_address(address)


def test_label():
    assert sanitize.label("My Project_2") == "my-project-2"
    assert sanitize.label("...") == "x"


def _forbidden(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat in ("Cc", "Cs", "Zl", "Zp") or (cat == "Cf" and ch not in "\u200c\u200d")


@settings(max_examples=300, deadline=None)
@given(st.text(), st.integers(2, 300))
def test_header_text_properties(text, limit):
    out = sanitize.header_text(text, limit)
    assert len(out) <= limit
    assert not any(_forbidden(ch) for ch in out)
    assert "=?" not in out
    assert out == out.strip() and "  " not in out
    assert sanitize.header_text(out, limit) == out  # idempotent


HOSTILE_PIECES = [
    *("a", " ", "=", "?", "\r", "\n", "\u2028", "q", "=0D=0A", "é", "utf-8", "Bcc: x@evil.org"),
    *("<evil@x.org>, ", '"', "(", ")", "\\", ";", "x" * 40, "Émile "),
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(HOSTILE_PIECES)).map("".join))
def test_sanitized_text_never_adds_a_header(text):
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = sanitize.subject(text)
    msg["From"] = Address(display_name=sanitize.display_name(text), addr_spec="noreply@example.org")
    msg["To"] = "jane@example.org"
    msg.set_content("body")
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert [k.lower() for k in parsed] == [
        "subject",
        "from",
        "to",
        "content-type",
        "content-transfer-encoding",
        "mime-version",
    ]
    # This Python unquotes long display names when folding: specials must be gone, or one would spoof.
    assert [a.addr_spec for a in parsed["From"].addresses] == ["noreply@example.org"]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_body_text_properties(text):
    out = sanitize.body_text(text)
    assert "\r" not in out and "\x00" not in out
    assert all(ch in "\n\t" or not _forbidden(ch) for ch in out)
