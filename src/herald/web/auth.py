"""Bearer-token authentication. The admin token manages users, projects and trackers; a user's own token
creates and updates artifacts as that user. Tokens are compared in constant time and never logged."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from herald.tracker.models import User
from herald.tracker.users import authenticate
from herald.web.runtime import Runtime, get_runtime

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin (user None) or a user."""

    user: User | None

    @property
    def is_admin(self) -> bool:
        return self.user is None


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing bearer token: send 'Authorization: Bearer <token>'", _CHALLENGE)
    return token.strip()


def principal(request: Request, runtime: Annotated[Runtime, Depends(get_runtime)]) -> Principal:
    token = _bearer(request)
    admin = runtime.settings.admin_token or ""
    if admin and hmac.compare_digest(token.encode(), admin.encode()):
        return Principal(user=None)
    with runtime.db.read() as session:
        user = authenticate(session, token)
    if user is None:
        raise HTTPException(401, "invalid or revoked token", _CHALLENGE)
    return Principal(user=user)


def admin(p: Annotated[Principal, Depends(principal)]) -> Principal:
    if not p.is_admin:
        raise HTTPException(403, "this endpoint needs the admin token")
    return p


def user(p: Annotated[Principal, Depends(principal)]) -> User:
    if p.user is None:
        raise HTTPException(403, "this endpoint acts as a user: use that user's own token")
    return p.user


AnyCaller = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
Caller = Annotated[User, Depends(user)]
