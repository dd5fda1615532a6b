"""Who may read and change what. Pure functions over loaded models; the notifier calls them per recipient.

Rules (documented in docs/architecture.md):
- a public project's artifacts are readable by every active user; a private project's by members only;
- a field is readable per its ``read_permission``: ``all`` (whoever reads the artifact), ``members``,
  ``admins``;
- a private comment is readable by project members only;
- any active user who can read a project may create artifacts and comment in it; changing fields of an
  existing artifact takes membership; nobody may set a field they cannot read.
"""

from __future__ import annotations

from herald.tracker.models import Changeset, Field, Project, ReadPermission, Role, User

__all__ = [
    "anonymous_can_read_comment",
    "anonymous_can_read_field",
    "can_comment",
    "can_create_artifact",
    "can_read_artifact",
    "can_read_comment",
    "can_read_field",
    "can_update_fields",
    "can_write_field",
]


def can_read_artifact(user: User, project: Project) -> bool:
    if not user.active:
        return False
    return project.public or project.role_of(user.id) is not None


def can_read_field(user: User, field: Field, project: Project) -> bool:
    if not can_read_artifact(user, project):
        return False
    role = project.role_of(user.id)
    if field.read_permission is ReadPermission.ALL:
        return True
    if field.read_permission is ReadPermission.MEMBERS:
        return role is not None
    return role is Role.ADMIN


def can_read_comment(user: User, changeset: Changeset, project: Project) -> bool:
    if not changeset.comment or not can_read_artifact(user, project):
        return False
    return not changeset.comment_private or project.role_of(user.id) is not None


def anonymous_can_read_field(field: Field, project: Project) -> bool:
    """What someone not signed in (a bare address on a global list, a link opened from a mail) may read:
    fields readable by all, in public projects only."""
    return project.public and field.read_permission is ReadPermission.ALL


def anonymous_can_read_comment(changeset: Changeset, project: Project) -> bool:
    return project.public and bool(changeset.comment) and not changeset.comment_private


def can_create_artifact(user: User, project: Project) -> bool:
    return can_read_artifact(user, project)


def can_comment(user: User, project: Project, *, private: bool) -> bool:
    if private:
        return user.active and project.role_of(user.id) is not None
    return can_read_artifact(user, project)


def can_update_fields(user: User, project: Project) -> bool:
    return user.active and project.role_of(user.id) is not None


def can_write_field(user: User, field: Field, project: Project) -> bool:
    return can_read_field(user, field, project)
