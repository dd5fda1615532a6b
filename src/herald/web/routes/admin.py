"""Users, projects and trackers: managed with the admin token (users may read and edit themselves)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from herald.tracker import permissions
from herald.tracker.models import Role
from herald.tracker.projects import create_project, get_project, set_member
from herald.tracker.trackers import create_tracker, get_tracker, semantics_notes, set_notifications
from herald.tracker.users import create_user, get_user, resolve_user, update_user
from herald.web import answers
from herald.web.auth import Admin, AnyCaller
from herald.web.routes.common import Id, RuntimeDep
from herald.web.schemas import (
    MembershipChange,
    NotificationSettings,
    ProjectCreate,
    TrackerCreate,
    UserCreate,
    UserUpdate,
)
from herald.web.views import project_view, tracker_view, user_view

router = APIRouter(prefix="/api", tags=["admin"])


@router.post(
    "/users",
    status_code=201,
    summary="Create a user; the answer carries its API token, shown once",
    response_model=answers.UserCreated,
)
def post_user(body: UserCreate, _: Admin, runtime: RuntimeDep) -> dict[str, Any]:
    with runtime.db.session() as s:
        attrs = body.model_dump(exclude={"username", "email"})
        user, token = create_user(s, username=body.username, email=body.email, **attrs)
        return {**user_view(user), "token": token}


def _self_or_admin(caller: AnyCaller, user_id: int) -> None:
    if not caller.is_admin and caller.user is not None and caller.user.id != user_id:
        raise HTTPException(404, f"user {user_id} does not exist")


@router.get("/users/{user_id}", response_model=answers.User)
def read_user(user_id: Id, caller: AnyCaller, runtime: RuntimeDep) -> dict[str, Any]:
    _self_or_admin(caller, user_id)
    with runtime.db.read() as s:
        return user_view(get_user(s, user_id))


@router.patch(
    "/users/{user_id}",
    summary="Change a user's preferences (self or admin); status is admin-only",
    response_model=answers.User,
)
def patch_user(user_id: Id, body: UserUpdate, caller: AnyCaller, runtime: RuntimeDep) -> dict[str, Any]:
    _self_or_admin(caller, user_id)
    changes = body.model_dump(exclude_unset=True)
    if "status" in changes and not caller.is_admin:
        raise HTTPException(403, "only the admin may suspend or reactivate a user")
    if any(v is None for v in changes.values()):
        raise HTTPException(422, "null is not a valid value for a user attribute")
    with runtime.db.session() as s:
        return user_view(update_user(s, user_id, changes))


@router.post("/projects", status_code=201, response_model=answers.Project)
def post_project(body: ProjectCreate, _: Admin, runtime: RuntimeDep) -> dict[str, Any]:
    with runtime.db.session() as s:
        project = create_project(s, **body.model_dump())
        return project_view(project)


@router.get("/projects/{project_id}", response_model=answers.Project)
def read_project(project_id: Id, caller: AnyCaller, runtime: RuntimeDep) -> dict[str, Any]:
    with runtime.db.read() as s:
        project = get_project(s, project_id)
        if caller.user is not None and not permissions.can_read_artifact(caller.user, project):
            raise HTTPException(404, f"project {project_id} does not exist")
        return project_view(project)


@router.post(
    "/projects/{project_id}/members",
    summary="Add, change (role) or remove (role null) a member",
    response_model=answers.Project,
)
def post_member(project_id: Id, body: MembershipChange, _: Admin, runtime: RuntimeDep) -> dict[str, Any]:
    with runtime.db.session() as s:
        project = get_project(s, project_id)
        member = resolve_user(s, body.user, "user")
        current = project.role_of(member.id)
        role = Role(body.role) if body.role else None
        if role is Role.MEMBER and current is Role.ADMIN:
            set_member(s, project, member.id, None)
            s.flush()
        set_member(s, project, member.id, role)
        s.flush()
        s.refresh(project)
        return project_view(project)


@router.post("/trackers", status_code=201, response_model=answers.TrackerCreated)
def post_tracker(body: TrackerCreate, _: Admin, runtime: RuntimeDep) -> dict[str, Any]:
    """The answer's ``warnings`` list each semantic inferred or left unset, and what follows from it."""
    spec = body.model_dump(exclude_none=True)
    # A semantic left out may be inferred; one given as null is deliberately unset.
    spec["semantics"] = body.semantics.model_dump(exclude_unset=True)
    with runtime.db.session() as s:
        tracker = create_tracker(s, spec)
        return {**tracker_view(tracker), "warnings": semantics_notes(tracker, spec)}


@router.get("/trackers/{tracker_id}", response_model=answers.Tracker)
def read_tracker(tracker_id: Id, caller: AnyCaller, runtime: RuntimeDep) -> dict[str, Any]:
    with runtime.db.read() as s:
        tracker = get_tracker(s, tracker_id)
        if caller.user is not None and not permissions.can_read_artifact(caller.user, tracker.project):
            raise HTTPException(404, f"tracker {tracker_id} does not exist")
        return tracker_view(tracker)


@router.put(
    "/trackers/{tracker_id}/notifications",
    summary="Replace the tracker's notification settings",
    response_model=answers.Tracker,
)
def put_notifications(
    tracker_id: Id, body: NotificationSettings, _: Admin, runtime: RuntimeDep
) -> dict[str, Any]:
    with runtime.db.session() as s:
        tracker = get_tracker(s, tracker_id)
        set_notifications(s, tracker, body.model_dump())
        s.flush()
        return tracker_view(tracker)
