"""JSON views of tracker objects. Artifact views are filtered by the viewer's permissions, like mails are."""

from __future__ import annotations

from typing import Any

from herald.tracker import permissions
from herald.tracker.models import Artifact, Changeset, Notification, Project, Tracker, User


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "real_name": user.real_name,
        "email": user.email,
        "language": user.language.value,
        "timezone": user.timezone,
        "mail_format": user.mail_format.value,
        "notify_own_changes": user.notify_own_changes,
        "status": user.status.value,
    }


def project_view(project: Project) -> dict[str, Any]:
    return {
        "id": project.id,
        "name": project.name,
        "label": project.label,
        "public": project.public,
        "members": sorted(m.user_id for m in project.memberships),
        "admins": sorted(m.user_id for m in project.memberships if m.role.value == "admin"),
    }


def tracker_view(tracker: Tracker) -> dict[str, Any]:
    def name_of(field_id: int | None) -> str | None:
        field = tracker.field_by_id(field_id) if field_id else None
        return field.name if field else None

    return {
        "id": tracker.id,
        "project_id": tracker.project_id,
        "name": tracker.name,
        "item_name": tracker.item_name,
        "fields": [
            {
                "id": f.id,
                "name": f.name,
                "label": f.label,
                "type": f.type.value,
                "required": f.required,
                "read_permission": f.read_permission.value,
                "notify": f.notify,
                "options": f.options,
            }
            for f in tracker.fields
        ],
        "semantics": {
            "title": name_of(tracker.title_field_id),
            "status": name_of(tracker.status_field_id),
            "open_values": tracker.open_values,
            "assigned_to": name_of(tracker.assigned_to_field_id),
        },
        "notifications": {
            "mode": tracker.notification_mode.value,
            "lists": [
                {
                    "addresses": gl.addresses,
                    "users": gl.user_ids,
                    "on_updates": gl.on_updates,
                    "check_permissions": gl.check_permissions,
                }
                for gl in tracker.global_lists
            ],
        },
    }


def artifact_view(artifact: Artifact, viewer: User | None, *, with_history: bool = True) -> dict[str, Any]:
    """The artifact as ``viewer`` may see it; ``viewer`` None is the admin, who sees everything."""
    tracker = artifact.tracker
    project = tracker.project

    def field_ok(field_id: int) -> bool:
        field = tracker.field_by_id(field_id)
        return field is not None and (viewer is None or permissions.can_read_field(viewer, field, project))

    values = {
        f.name: artifact.value_of(f.id)
        for f in tracker.fields
        if field_ok(f.id) and str(f.id) in artifact.values
    }
    view: dict[str, Any] = {
        "id": artifact.id,
        "tracker_id": tracker.id,
        "project_id": project.id,
        "submitted_by": artifact.submitted_by,
        "submitted_at": artifact.submitted_at.isoformat(),
        "last_updated_at": artifact.last_updated_at.isoformat(),
        "version": artifact.version,
        "values": values,
    }
    if with_history:
        views = (changeset_view(cs, viewer, field_ok, project) for cs in artifact.changesets)
        # As in mail: a changeset of which the viewer can read nothing (no readable change, no readable
        # comment) is not shown at all, not even its author and time. The creation always is.
        view["changesets"] = [v for v in views if v["is_creation"] or v["changes"] or v["comment"]]
    return view


def changeset_view(cs: Changeset, viewer: User | None, field_ok: Any, project: Project) -> dict[str, Any]:
    by_name = {f.id: f.name for f in cs.artifact.tracker.fields}
    comment_ok = viewer is None or permissions.can_read_comment(viewer, cs, project)
    return {
        "id": cs.id,
        "author_id": cs.author_id,
        "created_at": cs.created_at.isoformat(),
        "is_creation": cs.is_creation,
        "comment": cs.comment if comment_ok else None,
        "comment_private": cs.comment_private if comment_ok else False,
        "changes": [
            {"field": by_name.get(ch.field_id), "old": ch.old_value, "new": ch.new_value}
            for ch in cs.changes
            if field_ok(ch.field_id)
        ],
    }


def notification_view(n: Notification) -> dict[str, Any]:
    def ts(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "changeset_id": n.changeset_id,
        "mode": n.mode.value,
        "state": n.state.value,
        "job_id": n.job_id,
        "attempts": n.attempts,
        "created_at": ts(n.created_at),
        "queued_at": ts(n.queued_at),
        "started_at": ts(n.started_at),
        "finished_at": ts(n.finished_at),
        "last_error": n.last_error,
        "deliveries": [
            {
                "address": d.address,
                "user_id": d.user_id,
                "reason": d.reason,
                "status": d.status.value,
                "attempts": d.attempts,
                "message_id": d.message_id,
                "last_reply": d.last_reply,
                "updated_at": ts(d.updated_at),
            }
            for d in n.deliveries
        ],
    }
