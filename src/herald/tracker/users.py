"""User services: create, change, suspend, and authenticate by API token."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from herald.tracker import validate
from herald.tracker.errors import Conflict, InvalidInput, NotFound
from herald.tracker.models import GlobalNotification, Language, MailFormat, User, UserStatus

__all__ = [
    "authenticate",
    "check_email_is_free",
    "create_user",
    "get_user",
    "hash_token",
    "resolve_user",
    "update_user",
]

_EDITABLE = {"real_name", "email", "language", "timezone", "mail_format", "notify_own_changes", "status"}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _apply(user: User, changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if key == "real_name":
            user.real_name = validate.line(value, "real_name")
        elif key == "email":
            user.email = validate.email(value)
        elif key == "language":
            user.language = Language(validate.choice(value, "language", tuple(Language)))
        elif key == "timezone":
            user.timezone = validate.timezone(value)
        elif key == "mail_format":
            user.mail_format = MailFormat(validate.choice(value, "mail_format", tuple(MailFormat)))
        elif key == "notify_own_changes":
            user.notify_own_changes = validate.boolean(value, "notify_own_changes")
        elif key == "status":
            user.status = UserStatus(validate.choice(value, "status", tuple(UserStatus)))
        else:
            raise InvalidInput(f"unknown user attribute {key!r}", key)


def create_user(session: Session, *, username: str, email: str, **attrs: Any) -> tuple[User, str]:
    """Create a user and return it with its API token (shown once; only its hash is stored)."""
    validate.name(username, "username")
    if session.scalar(select(User.id).where(func.lower(User.username) == username.lower())):
        raise Conflict(f"username {username!r} is taken")
    token = secrets.token_urlsafe(32)
    user = User(username=username, email=validate.email(email), token_hash=hash_token(token))
    user.real_name = ""
    user.language = Language.EN
    user.timezone = "UTC"
    user.mail_format = MailFormat.HTML
    user.notify_own_changes = False
    user.status = UserStatus.ACTIVE
    _apply(user, attrs)
    session.add(user)
    session.flush()
    return user, token


def update_user(session: Session, user_id: int, changes: dict[str, Any]) -> User:
    """Change a user's attributes. A new email must not be another identity's (see
    :func:`check_email_is_free`): herald does not verify addresses, so it refuses to let one be taken."""
    user = get_user(session, user_id)
    unknown = set(changes) - _EDITABLE
    if unknown:
        raise InvalidInput(f"unknown user attribute(s): {', '.join(sorted(unknown))}")
    new_email = changes.get("email")
    if isinstance(new_email, str) and new_email.lower() != user.email.lower():
        check_email_is_free(session, validate.email(new_email), user.id)
    _apply(user, changes)
    session.flush()
    return user


def check_email_is_free(session: Session, address: str, user_id: int | None = None) -> None:
    """Raise Conflict if ``address`` (case-insensitively) is another user's email or on a global list.

    A list address is visible to every reader of the project; were a user able to make it their own, the
    mail of that list would follow their preferences (issue 9, defect 2). Another user's address would
    hand over that user's notifications.
    """
    key = address.lower()
    other = session.scalar(select(User.id).where(func.lower(User.email) == key, User.id != (user_id or 0)))
    if other is not None:
        raise Conflict(f"email {address!r} belongs to another user: choose an address of your own")
    for addresses in session.scalars(select(GlobalNotification.addresses)):
        if key in {a.lower() for a in addresses or ()}:
            raise Conflict(
                f"email {address!r} is a tracker's notification list: choose an address of your own"
            )


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    return user


def resolve_user(session: Session, ref: Any, what: str = "user") -> User:
    """A user named by id (int) or username (str)."""
    if isinstance(ref, str):
        user = session.scalar(select(User).where(User.username == ref))
        if user is None:
            raise InvalidInput(f"{what}: no user named {ref!r}", what)
        return user
    validate.positive_id(ref, what)
    user = session.get(User, ref)
    if user is None:
        raise InvalidInput(f"{what}: user {ref} does not exist", what)
    return user


def authenticate(session: Session, token: str) -> User | None:
    """The active user owning this API token, or None."""
    if not token or len(token) > 200:
        return None
    user = session.scalar(select(User).where(User.token_hash == hash_token(token)))
    if user is None or not user.active:
        return None
    return user
