"""Unsubscribe tokens: the ``{base_url}/unsubscribe/{token}`` links and List-Unsubscribe headers.

A token names a (user, artifact) pair and carries an HMAC-SHA256 of it under the server's secret, so a link
works without logging in (RFC 8058 One-Click posts carry no cookie) and cannot be forged for someone else.
Tokens do not expire: an unsubscribe link in an old mail must still work.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

__all__ = ["unsubscribe_token", "verify_unsubscribe_token"]

# Bumping the version makes every earlier token invalid (e.g. after a change of token meaning).
_DOMAIN = b"herald-unsubscribe-v1:"
_MAC_BYTES = 16  # 128 bits: far beyond guessing, and keeps the URL short enough for one header line
_TOKEN_RE = re.compile(r"([1-9][0-9]{0,18})-([1-9][0-9]{0,18})-([A-Za-z0-9_-]{22})", re.ASCII)


def _mac(secret: str, user_id: int, artifact_id: int) -> str:
    if not secret:
        # An empty key would make every token computable by anyone.
        raise ValueError("the unsubscribe secret must not be empty")
    digest = hmac.new(secret.encode(), _DOMAIN + f"{user_id}:{artifact_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:_MAC_BYTES]).rstrip(b"=").decode("ascii")


def unsubscribe_token(secret: str, user_id: int, artifact_id: int) -> str:
    """A URL- and header-safe token ``<user>-<artifact>-<mac>`` for one user and one artifact."""
    if user_id <= 0 or artifact_id <= 0:
        raise ValueError("user and artifact ids must be positive")
    return f"{user_id}-{artifact_id}-{_mac(secret, user_id, artifact_id)}"


def verify_unsubscribe_token(secret: str, token: str) -> tuple[int, int] | None:
    """``(user_id, artifact_id)`` if ``token`` was made with ``secret``, else None (compared in constant
    time)."""
    if not secret or not isinstance(token, str) or len(token) > 80:
        return None  # no secret configured: nothing can be verified, and that is not the caller's crash
    match = _TOKEN_RE.fullmatch(token)
    if match is None:
        return None
    user_id, artifact_id = int(match.group(1)), int(match.group(2))
    if not hmac.compare_digest(match.group(3), _mac(secret, user_id, artifact_id)):
        return None
    return user_id, artifact_id
