"""Load users, projects, trackers (and optionally artifacts) from a JSON or YAML document, all or nothing.

The document shape is documented in docs/api.md ("Seed files"); projects and trackers are referred to by
name (``project: demo``, ``tracker: demo/bugs``) so a file can be written before any id exists.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from herald.tracker import validate
from herald.tracker.artifacts import create_artifact
from herald.tracker.errors import InvalidInput
from herald.tracker.models import Changeset, Project, Tracker, User
from herald.tracker.projects import create_project
from herald.tracker.trackers import create_tracker
from herald.tracker.users import create_user

__all__ = ["LoadResult", "load_document", "read_document"]

_TOP_KEYS = {"users", "projects", "trackers", "artifacts"}
MAX_DOCUMENT_BYTES = 10 << 20


class LoadResult(dict[str, Any]):
    """Counts of what was created, and each new user's token (shown once)."""


def read_document(path: Path) -> dict[str, Any]:
    """Parse a .json, .yaml or .yml file; InvalidInput with the reason when it is not a document we take."""
    try:
        if path.stat().st_size > MAX_DOCUMENT_BYTES:
            raise InvalidInput(f"{path} is larger than {MAX_DOCUMENT_BYTES} bytes")
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    try:
        data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidInput(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    return validate.mapping(data, "document", _TOP_KEYS)


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    items = doc.get(key) or []
    if not isinstance(items, list):
        raise InvalidInput(f"{key} must be a list", key)
    return items


def load_document(
    session: Session,
    doc: dict[str, Any],
    *,
    on_changeset: Callable[[Session, Changeset], None] | None = None,
) -> LoadResult:
    """Create everything the document describes in the caller's transaction."""
    doc = validate.mapping(doc, "document", _TOP_KEYS)
    result = LoadResult(users=0, projects=0, trackers=0, artifacts=0, tokens={})
    for i, item in enumerate(_list(doc, "users")):
        attrs = dict(
            validate.mapping(
                item,
                f"users[{i}]",
                {
                    "username",
                    "email",
                    "real_name",
                    "language",
                    "timezone",
                    "mail_format",
                    "notify_own_changes",
                    "status",
                },
                {"username", "email"},
            )
        )
        user, token = create_user(session, username=attrs.pop("username"), email=attrs.pop("email"), **attrs)
        result["tokens"][user.username] = token
        result["users"] += 1
    for i, item in enumerate(_list(doc, "projects")):
        item = validate.mapping(
            item, f"projects[{i}]", {"name", "label", "public", "members", "admins"}, {"name"}
        )
        create_project(session, **item)
        result["projects"] += 1
    for i, item in enumerate(_list(doc, "trackers")):
        spec = dict(
            validate.mapping(
                item,
                f"trackers[{i}]",
                {"project", "name", "item_name", "fields", "semantics", "notifications"},
                {"project"},
            )
        )
        spec["project_id"] = _project(session, spec.pop("project"), f"trackers[{i}].project").id
        create_tracker(session, spec)
        result["trackers"] += 1
    for i, item in enumerate(_list(doc, "artifacts")):
        item = validate.mapping(
            item,
            f"artifacts[{i}]",
            {"tracker", "author", "values", "comment"},
            {"tracker", "author", "values"},
        )
        tracker = _tracker(session, item["tracker"], f"artifacts[{i}].tracker")
        author = session.scalar(select(User).where(User.username == item["author"]))
        if author is None:
            raise InvalidInput(f"artifacts[{i}].author: no user named {item['author']!r}")
        changeset = create_artifact(
            session,
            tracker_id=tracker.id,
            author=author,
            values=item["values"],
            comment=item.get("comment"),
        )
        if on_changeset is not None:  # e.g. the caller records the notification each change owes
            on_changeset(session, changeset)
        result["artifacts"] += 1
    return result


def _project(session: Session, name: Any, what: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name)) if isinstance(name, str) else None
    if project is None:
        raise InvalidInput(f"{what}: no project named {name!r}", what)
    return project


def _tracker(session: Session, ref: Any, what: str) -> Tracker:
    if not isinstance(ref, str) or ref.count("/") != 1:
        raise InvalidInput(f"{what} must be written project/tracker, e.g. demo/bugs", what)
    project_name, tracker_name = ref.split("/")
    project = _project(session, project_name, what)
    tracker = session.scalar(
        select(Tracker).where(Tracker.project_id == project.id, Tracker.name == tracker_name)
    )
    if tracker is None:
        raise InvalidInput(f"{what}: project {project_name!r} has no tracker {tracker_name!r}", what)
    return tracker
