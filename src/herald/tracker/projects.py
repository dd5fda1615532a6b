"""Project services: create projects and manage their members and admins."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from herald.tracker import validate
from herald.tracker.errors import Conflict, NotFound
from herald.tracker.models import Membership, Project, Role
from herald.tracker.users import resolve_user

__all__ = ["create_project", "get_project", "set_member"]


def create_project(
    session: Session,
    *,
    name: str,
    label: str = "",
    public: bool = True,
    members: Iterable[Any] = (),
    admins: Iterable[Any] = (),
) -> Project:
    """Create a project; ``members`` and ``admins`` are user ids or usernames."""
    validate.name(name, "name")
    if session.scalar(select(Project.id).where(Project.name == name)):
        raise Conflict(f"project name {name!r} is taken")
    project = Project(
        name=name, label=validate.line(label, "label"), public=validate.boolean(public, "public")
    )
    session.add(project)
    session.flush()
    for ref in members:
        set_member(session, project, resolve_user(session, ref, "members").id, Role.MEMBER)
    for ref in admins:
        set_member(session, project, resolve_user(session, ref, "admins").id, Role.ADMIN)
    session.flush()
    return project


def set_member(session: Session, project: Project, user_id: int, role: Role | None) -> None:
    """Add, change or (role None) remove a membership. Admin wins over member when both are given."""
    current = next((m for m in project.memberships if m.user_id == user_id), None)
    if role is None:
        if current is not None:
            project.memberships.remove(current)
        return
    if current is None:
        project.memberships.append(Membership(user_id=user_id, role=role))
    elif current.role is not Role.ADMIN:
        current.role = role


def get_project(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    return project
