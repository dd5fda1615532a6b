"""``/artifacts/{id}``: the page that mail links open. herald is a notification backend, not a tracker UI,
so this shows what anyone may read without signing in — a public project's artifact, its fields readable
by all and its public comments — and nothing of a private project (a 404, as for an unknown id)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from herald.tracker import permissions
from herald.tracker.models import Artifact, FieldType, User
from herald.web.pages import page
from herald.web.routes.common import Id, RuntimeDep

router = APIRouter(include_in_schema=False)


def _shown(value: Any, ftype: FieldType, names: dict[int, str]) -> str:
    if value is None:
        return ""
    if ftype is FieldType.USER:
        return names.get(value, f"user {value}")
    if ftype is FieldType.USERS:
        return ", ".join(names.get(v, f"user {v}") for v in value)
    return str(value)


@router.get("/artifacts/{artifact_id}", response_class=HTMLResponse)
def artifact_page(artifact_id: Id, runtime: RuntimeDep) -> HTMLResponse:
    with runtime.db.read() as s:
        artifact = s.get(Artifact, artifact_id)
        project = artifact.tracker.project if artifact is not None else None
        if artifact is None or project is None or not project.public:
            return page("artifact.html", status_code=404, missing=artifact_id)
        tracker = artifact.tracker
        fields = [f for f in tracker.fields if permissions.anonymous_can_read_field(f, project)]
        user_ids = {artifact.submitted_by} | {cs.author_id for cs in artifact.changesets}
        for f in fields:
            value = artifact.value_of(f.id)
            if f.type is FieldType.USER and value is not None:
                user_ids.add(value)
            elif f.type is FieldType.USERS and value:
                user_ids.update(value)
        names = {
            uid: real or username
            for uid, real, username in s.execute(
                select(User.id, User.real_name, User.username).where(User.id.in_(user_ids))
            )
        }
        title_field = tracker.field_by_id(tracker.title_field_id) if tracker.title_field_id else None
        title = artifact.value_of(title_field.id) if title_field in fields else None
        comments = [
            (names.get(cs.author_id, "?"), cs.created_at, cs.comment)
            for cs in artifact.changesets
            if permissions.anonymous_can_read_comment(cs, project)
        ]
        return page(
            "artifact.html",
            heading=f"{tracker.item_name} #{artifact.id}",
            title=title,
            project=project.label or project.name,
            rows=[(f.label, _shown(artifact.value_of(f.id), f.type, names)) for f in fields],
            comments=comments,
        )
