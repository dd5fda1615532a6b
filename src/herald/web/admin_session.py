"""The admin console's sign-in: a server-side session named by a random cookie, and its CSRF token.

Browsers cannot send a bearer header on navigation, so the console signs in once with the admin token and
then holds a cookie naming a row of ``admin_sessions`` (:mod:`herald.tracker.admin_sessions`): HttpOnly,
SameSite=Strict, Secure when ``base_url`` is https, scoped to ``/admin``. Sign-out deletes the row, so a
copied cookie stops working at once; rotating ``admin_token`` ends every session. Every form post carries
the session's CSRF token.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs

from fastapi import HTTPException, Request
from fastapi.responses import Response

from herald.tracker.admin_sessions import (
    SessionInfo,
    grant_of,
    open_session,
    purge_expired,
    read_session,
    revoke_session,
    touch_session,
)
from herald.tracker.models import utcnow
from herald.web.runtime import Runtime

__all__ = ["COOKIE", "current", "end", "read_form", "require_csrf", "start"]

COOKIE = "herald_admin"
COOKIE_PATH = "/admin"
#: The largest admin form herald reads (a sign-in or a dead-letter action is a few dozen bytes).
MAX_FORM_BYTES = 4096


def _token(request: Request) -> str:
    return request.cookies.get(COOKIE, "")


def _grant(runtime: Runtime) -> str:
    return grant_of(runtime.settings.admin_token or "")


def current(request: Request, runtime: Runtime) -> SessionInfo | None:
    """The request's live session, or None (no cookie, unknown, revoked, expired or idle)."""
    token = _token(request)
    if not token:
        return None
    now = utcnow()
    with runtime.db.read() as s:
        info = read_session(
            s, token, idle=runtime.settings.admin_session_idle_seconds, grant=_grant(runtime), now=now
        )
    if info is not None and info.needs_touch(now):
        with runtime.db.session() as s:
            touch_session(s, token, now=now)
    return info


def start(request: Request, runtime: Runtime, response: Response) -> None:
    """Open a session and set its cookie on ``response``; sessions that ran out are cleared meanwhile."""
    settings = runtime.settings
    client = request.client.host if request.client is not None else ""
    with runtime.db.session() as s:
        purge_expired(s, idle=settings.admin_session_idle_seconds)
        token = open_session(s, lifetime=settings.admin_session_seconds, grant=_grant(runtime), client=client)
    response.set_cookie(
        COOKIE,
        token,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=settings.base_url.startswith("https://"),
        max_age=int(settings.admin_session_seconds),
    )


def end(request: Request, runtime: Runtime, response: Response) -> None:
    """Revoke the request's session (if any) and clear its cookie."""
    token = _token(request)
    if token:
        with runtime.db.session() as s:
            revoke_session(s, token)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form as name -> value; 400 for anything else (too big, repeated names, binary)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, f"form larger than {MAX_FORM_BYTES} bytes")
    try:
        text = body.decode("ascii")
        pairs = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "malformed form: expected application/x-www-form-urlencoded") from None
    if any(len(values) != 1 for values in pairs.values()):
        raise HTTPException(400, "malformed form: a field is repeated")
    return {name: values[0] for name, values in pairs.items()}


def require_csrf(form: dict[str, str], info: SessionInfo) -> None:
    """403 unless the form carries this session's CSRF token."""
    sent = form.get("csrf", "")
    if not sent or not hmac.compare_digest(sent.encode(), info.csrf_token.encode()):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
