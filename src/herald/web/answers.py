"""Answer bodies of the artifact endpoints, declared so that ``/openapi.json`` says what a client gets back.

One artifact shape (issue 9): create, update and read answer with the artifact flat; a write adds
``changeset_id`` and ``notification`` (what the request did), a read adds ``changesets`` (the history).
The views in :mod:`herald.web.views` build plain dicts; these models document and check them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "ArtifactRead",
    "ArtifactSubscription",
    "ArtifactWritten",
    "Health",
    "TrackerSubscription",
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


class Health(BaseModel):
    status: Literal["ok", "error"]
    database: str = Field(description="'ok', or the class of the error that reaching it raised")
