"""Admin console sessions in the database: random, hashed, revocable, expiring, idle-limited."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from herald.tracker.admin_sessions import (
    grant_of,
    open_session,
    purge_expired,
    read_session,
    revoke_session,
    touch_session,
)
from herald.tracker.db import Database
from herald.tracker.models import AdminSession, utcnow

G = grant_of("the admin token")


def test_a_session_lives_until_expiry_idle_or_revocation(any_db: Database):
    now = utcnow()
    with any_db.session() as s:
        token = open_session(s, lifetime=3600, grant=G, client="203.0.113.9", now=now)
        other = open_session(s, lifetime=3600, grant=G, now=now)
    assert token != other and len(token) >= 40
    with any_db.read() as s:
        info = read_session(s, token, idle=600, grant=G, now=now + timedelta(seconds=1))
        assert info is not None and len(info.csrf_token) >= 40
        assert token not in s.scalars(select(AdminSession.token_hash)).all()
        assert read_session(s, token, idle=600, grant=G, now=now + timedelta(seconds=600)) is None  # idle
        assert read_session(s, token, idle=600, grant=grant_of("a rotated token"), now=now) is None
        assert read_session(s, "nope", idle=600, grant=G, now=now) is None
        assert read_session(s, "x" * 1000, idle=600, grant=G, now=now) is None
    with any_db.session() as s:
        touch_session(s, token, now=now + timedelta(seconds=500))
    with any_db.read() as s:
        assert read_session(s, token, idle=600, grant=G, now=now + timedelta(seconds=900)) is not None
        assert (
            read_session(s, token, idle=10**6, grant=G, now=now + timedelta(seconds=3600)) is None
        )  # expired
    with any_db.session() as s:
        assert revoke_session(s, token) and not revoke_session(s, token)
    with any_db.read() as s:
        assert read_session(s, token, idle=600, grant=G, now=now) is None
        assert read_session(s, other, idle=600, grant=G, now=now) is not None


def test_purge_expired(any_db: Database):
    now = utcnow()
    with any_db.session() as s:
        open_session(s, lifetime=60, grant=G, now=now - timedelta(seconds=120))
        keep = open_session(s, lifetime=3600, grant=G, now=now)
    with any_db.session() as s:
        assert purge_expired(s, idle=600, now=now) == 1
    with any_db.read() as s:
        assert read_session(s, keep, idle=600, grant=G, now=now) is not None
