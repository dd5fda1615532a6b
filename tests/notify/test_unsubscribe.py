"""Unsubscribe tokens: round trip, and nothing else verifies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.notify import unsubscribe_token, verify_unsubscribe_token

SECRET = "s3cret"


def test_round_trip_and_url_safety():
    token = unsubscribe_token(SECRET, 12, 345)
    assert verify_unsubscribe_token(SECRET, token) == (12, 345)
    assert all(c.isalnum() or c in "-_" for c in token) and len(token) < 60
    assert unsubscribe_token(SECRET, 12, 345) == token  # stable: old links keep working


def test_forged_and_foreign_tokens_fail():
    token = unsubscribe_token(SECRET, 12, 345)
    user, artifact, mac = token.split("-", 2)
    assert verify_unsubscribe_token("other secret", token) is None
    assert verify_unsubscribe_token(SECRET, f"13-{artifact}-{mac}") is None
    assert verify_unsubscribe_token(SECRET, f"{user}-346-{mac}") is None
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    assert verify_unsubscribe_token(SECRET, f"{user}-{artifact}-{flipped}") is None


@pytest.mark.parametrize(
    "token", ["", "12-345", "012-345-" + "A" * 22, "12-345-" + "A" * 21, "12-345-" + "A" * 500, None, 12]
)
def test_malformed_tokens_fail(token):
    assert verify_unsubscribe_token(SECRET, token) is None


def test_empty_secret_and_bad_ids_are_refused():
    with pytest.raises(ValueError):
        unsubscribe_token("", 1, 1)
    with pytest.raises(ValueError):
        unsubscribe_token(SECRET, 0, 1)
    assert verify_unsubscribe_token("", unsubscribe_token(SECRET, 1, 1)) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=90))
def test_random_strings_never_verify(text):
    assert verify_unsubscribe_token(SECRET, text) is None
