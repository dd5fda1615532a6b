"""Artifact services: create and update artifacts. Each call writes one changeset in the caller's
transaction; the caller records the notification it owes (``herald.outbox.record``) in that same
transaction, so the notification commits (or not) with the change itself."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from herald.tracker import permissions, validate
from herald.tracker.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from herald.tracker.models import Artifact, Changeset, Field, FieldChange, FieldType, Tracker, User, utcnow
from herald.tracker.trackers import get_tracker
from herald.tracker.users import resolve_user

__all__ = ["NothingChanged", "create_artifact", "get_artifact", "mentioned_usernames", "update_artifact"]

MAX_USERS_PER_FIELD = 500
MAX_MENTIONS = 100
MENTION_RE = re.compile(r"(?<![\w.@/])@([a-z0-9][a-z0-9._-]{0,63})", re.IGNORECASE)


class NothingChanged(InvalidInput):
    """An update whose values equal the current ones and that has no comment: no changeset is written.
    The HTTP API answers it 200 (an idempotent PUT-like PATCH); other callers may treat it as an error."""


def mentioned_usernames(comment: str) -> list[str]:
    """Usernames written as @name in a comment, in order, without repeats (trailing dots trimmed)."""
    seen: dict[str, None] = {}
    for match in MENTION_RE.finditer(comment):
        seen.setdefault(match.group(1).rstrip("._-").lower(), None)
    return [n for n in seen if n]


def create_artifact(
    session: Session,
    *,
    tracker_id: int,
    author: User,
    values: Any,
    comment: str | None = None,
    comment_private: bool = False,
) -> Changeset:
    """Create an artifact with its first changeset (``is_creation``) ."""
    tracker = get_tracker(session, tracker_id)
    project = tracker.project
    if not permissions.can_create_artifact(author, project):
        # Whoever may not create here may not read the project either: answer as for an unknown tracker.
        raise NotFound(f"tracker {tracker_id} does not exist")
    new_values = _normalize_values(session, tracker, author, values)
    for field in tracker.fields:
        if field.required and new_values.get(field.name) is None:
            raise InvalidInput(f"field {field.name!r} is required", f"values.{field.name}")
    now = utcnow()
    artifact = Artifact(tracker_id=tracker.id, submitted_by=author.id, submitted_at=now, last_updated_at=now)
    artifact.values = {}
    artifact.version = 1
    session.add(artifact)
    session.flush()
    changes = _diff(tracker, {}, new_values)
    artifact.values = {str(field.id): new for field, _old, new in changes}
    return _record(session, artifact, tracker, author, changes, comment, comment_private, True, now)


def update_artifact(
    session: Session,
    *,
    artifact_id: int,
    author: User,
    values: Any = None,
    comment: str | None = None,
    comment_private: bool = False,
    expected_version: int | None = None,
) -> Changeset:
    """Change fields and/or add a comment. Fails with InvalidInput if nothing would change."""
    # The row lock (PostgreSQL) or the write lock taken at BEGIN (SQLite) serializes concurrent updates of
    # one artifact, so each one diffs against the values the previous one committed: no change is lost.
    artifact = session.get(Artifact, artifact_id, with_for_update=True, populate_existing=True)
    if artifact is None:
        raise NotFound(f"artifact {artifact_id} does not exist")
    tracker = artifact.tracker
    project = tracker.project
    if not permissions.can_read_artifact(author, project):
        raise NotFound(f"artifact {artifact_id} does not exist")
    if expected_version is not None and validate.integer(expected_version, "version") != artifact.version:
        raise Conflict(f"artifact {artifact_id} is at version {artifact.version}, not {expected_version}")
    values = {} if values is None else values
    # The right to change fields is checked before any value: a value's error ("user 'x' is suspended")
    # must not tell a non-member what they could not otherwise learn.
    if values and not permissions.can_update_fields(author, project):
        raise PermissionDenied(f"{author.username} may not change fields in project {project.name!r}")
    new_values = _normalize_values(session, tracker, author, values)
    for name, value in new_values.items():
        field = tracker.field_by_name(name)
        if field is not None and field.required and value is None:
            raise InvalidInput(f"field {name!r} is required and cannot be emptied", f"values.{name}")
    current = {f.name: artifact.value_of(f.id) for f in tracker.fields}
    changes = _diff(tracker, current, {**current, **new_values})
    if not changes and not (comment and comment.strip()):
        raise NothingChanged("the update changes nothing: give new field values or a comment")
    merged = dict(artifact.values)
    for field, _old, new in changes:
        if new is None:
            merged.pop(str(field.id), None)
        else:
            merged[str(field.id)] = new
    artifact.values = merged
    artifact.version += 1
    now = utcnow()
    artifact.last_updated_at = now
    return _record(session, artifact, tracker, author, changes, comment, comment_private, False, now)


def _record(
    session: Session,
    artifact: Artifact,
    tracker: Tracker,
    author: User,
    changes: list[tuple[Field, Any, Any]],
    comment: str | None,
    comment_private: bool,
    is_creation: bool,
    now: datetime,
) -> Changeset:
    project = tracker.project
    validate.boolean(comment_private, "comment_private")
    if comment is not None:
        comment = validate.text(comment, "comment").strip() or None
    if comment is None:
        comment_private = False
    if comment and not permissions.can_comment(author, project, private=comment_private):
        raise PermissionDenied(f"{author.username} may not add this comment")
    mentions = _mentions(session, comment) if comment else []
    changeset = Changeset(
        artifact_id=artifact.id,
        author_id=author.id,
        created_at=now,
        is_creation=is_creation,
        comment=comment,
        comment_private=comment_private,
        mentioned_user_ids=mentions,
    )
    changeset.changes = [FieldChange(field_id=f.id, old_value=old, new_value=new) for f, old, new in changes]
    session.add(changeset)
    session.flush()
    return changeset


def _mentions(session: Session, comment: str) -> list[int]:
    names = mentioned_usernames(comment)
    if len(names) > MAX_MENTIONS:
        raise InvalidInput(
            f"comment @mentions {len(names)} users; at most {MAX_MENTIONS} may be mentioned in one comment",
            "comment",
        )
    if not names:
        return []
    rows = session.execute(select(User.id, User.username).where(User.username.in_(names))).all()
    by_name = {username: uid for uid, username in rows}
    return [by_name[n] for n in names if n in by_name]


def _diff(tracker: Tracker, old: dict[str, Any], new: dict[str, Any]) -> list[tuple[Field, Any, Any]]:
    out = []
    for field in tracker.fields:
        before, after = old.get(field.name), new.get(field.name)
        if before != after:
            out.append((field, before, after))
    return out


def _normalize_values(session: Session, tracker: Tracker, author: User, values: Any) -> dict[str, Any]:
    """Validate ``{field name: value}`` and return it with each value in its stored form."""
    if not isinstance(values, dict):
        raise InvalidInput("values must be an object of field name to value", "values")
    fields: dict[str, Field] = {}
    # Every field's right first, then the values: no value is looked at for a field one may not set.
    for name in values:
        field = tracker.field_by_name(name) if isinstance(name, str) else None
        if field is None:
            raise InvalidInput(f"tracker {tracker.name!r} has no field {name!r}", f"values.{name}")
        if not permissions.can_write_field(author, field, tracker.project):
            raise PermissionDenied(f"{author.username} may not set field {name!r}")
        fields[name] = field
    return {
        name: None if value is None else _normalize(session, fields[name], value)
        for name, value in values.items()
    }


def _normalize(session: Session, field: Field, value: Any) -> Any:
    what = f"values.{field.name}"
    match field.type:
        case FieldType.STRING:
            return validate.line(value, what, max_len=validate.MAX_STRING)
        case FieldType.TEXT:
            return validate.text(value, what)
        case FieldType.INT:
            return validate.integer(value, what)
        case FieldType.FLOAT:
            return validate.number(value, what)
        case FieldType.DATE:
            return validate.iso_date(value, what)
        case FieldType.SELECT:
            if not isinstance(value, str) or value not in field.options:
                raise InvalidInput(f"{what} must be one of: {', '.join(field.options)}", what)
            return value
        case FieldType.USER:
            return _active_user(session, value, what).id
        case FieldType.USERS:
            if not isinstance(value, list) or len(value) > MAX_USERS_PER_FIELD:
                raise InvalidInput(f"{what} must be a list of at most {MAX_USERS_PER_FIELD} users", what)
            ids = sorted({_active_user(session, v, what).id for v in value})
            return ids or None
    raise InvalidInput(f"{what}: unsupported field type {field.type}", what)


def _active_user(session: Session, ref: Any, what: str) -> User:
    user = resolve_user(session, ref, what)
    if not user.active:
        raise InvalidInput(f"{what}: user {user.username!r} is suspended", what)
    return user


def get_artifact(session: Session, artifact_id: int, viewer: User | None) -> Artifact:
    """The artifact if ``viewer`` may read it (None means the admin token); NotFound otherwise."""
    artifact = session.get(Artifact, artifact_id)
    hidden = (
        viewer is not None
        and artifact is not None
        and not permissions.can_read_artifact(viewer, artifact.tracker.project)
    )
    if artifact is None or hidden:
        raise NotFound(f"artifact {artifact_id} does not exist")
    return artifact
