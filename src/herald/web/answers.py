"""Answer bodies of the JSON API, declared so that ``/openapi.json`` says what a client gets back.

One artifact shape (issue 9): create, update and read answer with the artifact flat; a write adds
``changeset_id`` and ``notification`` (what the request did), a read adds ``changesets`` (the history).
The views in :mod:`herald.web.views` build plain dicts; these models document and check them. A key a view
adds that a model does not declare yet is passed on (``extra="allow"``), never dropped; the schemathesis
test and the shape tests hold the declarations to the views.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel as _PydanticModel
from pydantic import ConfigDict, Field


class BaseModel(_PydanticModel):
    model_config = ConfigDict(extra="allow")


__all__ = [
    "ArtifactRead",
    "ArtifactSubscription",
    "ArtifactWritten",
    "Health",
    "Project",
    "Tracker",
    "TrackerCreated",
    "TrackerSubscription",
    "User",
    "UserCreated",
]


class FieldChange(BaseModel):
    field: str | None = Field(description="the field's name")
    old: Any
    new: Any


class ChangesetView(BaseModel):
    id: int
    author_id: int
    created_at: str = Field(description="ISO 8601, UTC")
    is_creation: bool
    comment: str | None = Field(description="null when there is none, or the caller may not read it")
    comment_private: bool
    changes: list[FieldChange] = Field(description="the changes to fields the caller may read")


class Artifact(BaseModel):
    id: int
    tracker_id: int
    project_id: int
    submitted_by: int
    submitted_at: str = Field(description="ISO 8601, UTC")
    last_updated_at: str = Field(description="ISO 8601, UTC")
    version: int = Field(
        description="raised by each change; send it back as `version` to refuse a concurrent one"
    )
    values: dict[str, Any] = Field(description="the fields the caller may read, by name")


class NotificationLink(BaseModel):
    mode: Literal["inline", "async"]
    status: str = Field(description="GET this path (admin token) to follow the notification")


class ArtifactWritten(Artifact):
    """The artifact after a create or an update, and the change the request made."""

    changeset_id: int | None = Field(description="null when an update changed nothing")
    notification: NotificationLink | None = Field(description="null when an update changed nothing")


class ArtifactRead(Artifact):
    """The artifact and the history the caller may see."""

    changesets: list[ChangesetView]


class ArtifactSubscription(BaseModel):
    artifact_id: int
    state: Literal["default", "following", "unsubscribed"]
    meaning: str


class TrackerSubscription(BaseModel):
    tracker_id: int
    state: Literal["default", "unsubscribed"]
    meaning: str


class HealthWorkers(BaseModel):
    alive: int
    expected: int


class Health(BaseModel):
    status: Literal["ok", "degraded", "error"]
    database: str = Field(description="'ok', or the class of the error that reaching it raised")
    missing: list[Literal["workers", "outbox-relay", "smtp-relay"]] | None = Field(
        None, description="the parts that are down (absent when the database cannot be read)"
    )
    workers: HealthWorkers | None = Field(None, description="workers alive and expected")


class User(BaseModel):
    id: int
    username: str
    real_name: str
    email: str
    language: Literal["en", "fr"]
    timezone: str
    mail_format: Literal["html", "text"]
    notify_own_changes: bool
    status: Literal["active", "suspended"]


class UserCreated(User):
    token: str = Field(description="the user's API token: shown once, only its hash is kept")


class Project(BaseModel):
    id: int
    name: str
    label: str
    public: bool
    members: list[int] = Field(description="user ids, admins included")
    admins: list[int]


class FieldView(BaseModel):
    id: int
    name: str
    label: str | None
    type: Literal["string", "text", "int", "float", "date", "select", "user", "users"]
    required: bool
    read_permission: Literal["all", "members", "admins"]
    notify: bool
    options: list[str]


class SemanticsView(BaseModel):
    title: str | None
    status: str | None
    open_values: list[str]
    assigned_to: str | None


class ListView(BaseModel):
    addresses: list[str]
    users: list[int]
    on_updates: bool
    check_permissions: bool


class NotificationsView(BaseModel):
    mode: Literal["all_updates", "creation_only", "status_change_only", "stopped"]
    lists: list[ListView]


class Tracker(BaseModel):
    id: int
    project_id: int
    name: str
    item_name: str
    fields: list[FieldView]
    semantics: SemanticsView
    notifications: NotificationsView


class TrackerCreated(Tracker):
    warnings: list[str] = Field(description="each semantic inferred or left unset, and what follows")
