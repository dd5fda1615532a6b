"""Admin console sessions, kept in the database so every front end shares them.

The browser holds a random token (``secrets.token_urlsafe``); the table holds only its SHA-256, so a
leaked database hands out no working session. A session ends at sign-out (its row is deleted), at its
absolute expiry, after ``idle`` seconds unused, or when the credential it was opened with changes (its
``grant``, a digest the caller derives from the admin token). Each session carries its own CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from herald.tracker.models import AdminSession, utcnow

__all__ = [
    "SessionInfo",
    "grant_of",
    "open_session",
    "purge_expired",
    "read_session",
    "revoke_session",
    "touch_session",
]

#: A token of this many bytes of randomness (43 URL-safe characters).
TOKEN_BYTES = 32
#: Longest cookie value accepted before hashing: anything longer is not one of ours.
MAX_TOKEN_LENGTH = 128
#: ``last_seen_at`` is written at most this often, so a page polled every few seconds costs no write.
TOUCH_EVERY = timedelta(seconds=60)


@dataclass(frozen=True)
class SessionInfo:
    """What a request learns about its session."""

    csrf_token: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime

    def needs_touch(self, now: datetime) -> bool:
        """Whether the last use is old enough to be written again (see :data:`TOUCH_EVERY`)."""
        return now - self.last_seen_at >= TOUCH_EVERY


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _plausible(token: str) -> bool:
    return bool(token) and len(token) <= MAX_TOKEN_LENGTH


def grant_of(credential: str) -> str:
    """The digest a session keeps of the credential it was opened with (never the credential)."""
    return hashlib.sha256(b"herald-admin-session:" + credential.encode("utf-8", "surrogatepass")).hexdigest()


def open_session(
    session: Session, *, lifetime: float, grant: str, client: str = "", now: datetime | None = None
) -> str:
    """Start a session of at most ``lifetime`` seconds; return the token for the cookie (shown once)."""
    now = now or utcnow()
    token = secrets.token_urlsafe(TOKEN_BYTES)
    session.add(
        AdminSession(
            token_hash=_hash(token),
            csrf_token=secrets.token_urlsafe(TOKEN_BYTES),
            credential_digest=grant,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=lifetime),
            client=client[:64],
        )
    )
    return token


def read_session(
    session: Session, token: str, *, idle: float, grant: str, now: datetime | None = None
) -> SessionInfo | None:
    """The live session ``token`` names; None if unknown, revoked, past its expiry, idle too long, or
    opened with another credential than ``grant``.

    Reads only: a page polled every few seconds must not write. Call :func:`touch_session` when
    :meth:`SessionInfo.needs_touch` says so.
    """
    if not _plausible(token):
        return None
    now = now or utcnow()
    row = session.scalar(select(AdminSession).where(AdminSession.token_hash == _hash(token)))
    if row is None or row.expires_at <= now or row.last_seen_at + timedelta(seconds=idle) <= now:
        return None
    if not hmac.compare_digest(row.credential_digest, grant):
        return None
    return SessionInfo(row.csrf_token, row.created_at, row.last_seen_at, row.expires_at)


def touch_session(session: Session, token: str, *, now: datetime | None = None) -> None:
    """Record a use of the session now (what the idle timeout counts from)."""
    if _plausible(token):
        session.execute(
            update(AdminSession)
            .where(AdminSession.token_hash == _hash(token))
            .values(last_seen_at=now or utcnow())
        )


def revoke_session(session: Session, token: str) -> bool:
    """End the session ``token`` names (sign-out); True if there was one."""
    if not _plausible(token):
        return False
    result = session.execute(delete(AdminSession).where(AdminSession.token_hash == _hash(token)))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def purge_expired(session: Session, *, idle: float, now: datetime | None = None) -> int:
    """Delete the sessions past their expiry or idle too long; return how many."""
    now = now or utcnow()
    result = session.execute(
        delete(AdminSession).where(
            (AdminSession.expires_at <= now) | (AdminSession.last_seen_at <= now - timedelta(seconds=idle))
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
