"""Request bodies of the JSON API. Strict: no coercion ("1" is not 1) and no unknown keys, so a typo in a
client is an error it can see rather than a setting silently ignored. Semantic checks (a select value, a
user that exists) happen in the tracker services, which return the same error shape."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from herald.tracker.validate import EMAIL_RE, NAME_RE

UserRef = StrictInt | StrictStr
# Documented in OpenAPI; enforced by the tracker services, whose messages say what to fix.
_NAME_DOC = {"pattern": NAME_RE.pattern}
_EMAIL_DOC = {"format": "email", "pattern": f"^{EMAIL_RE.pattern}$"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class UserCreate(Strict):
    username: StrictStr = Field(min_length=1, max_length=64, json_schema_extra=_NAME_DOC)
    email: StrictStr = Field(min_length=3, max_length=254, json_schema_extra=_EMAIL_DOC)
    real_name: StrictStr = Field("", max_length=200)
    language: Literal["en", "fr"] = "en"
    timezone: StrictStr = Field("UTC", max_length=64)
    mail_format: Literal["html", "text"] = "html"
    notify_own_changes: StrictBool = False


class UserUpdate(Strict):
    email: StrictStr | None = Field(None, min_length=3, max_length=254, json_schema_extra=_EMAIL_DOC)
    real_name: StrictStr | None = Field(None, max_length=200)
    language: Literal["en", "fr"] | None = None
    timezone: StrictStr | None = Field(None, max_length=64)
    mail_format: Literal["html", "text"] | None = None
    notify_own_changes: StrictBool | None = None
    status: Literal["active", "suspended"] | None = None


class ProjectCreate(Strict):
    name: StrictStr = Field(min_length=1, max_length=64, json_schema_extra=_NAME_DOC)
    label: StrictStr = Field("", max_length=200)
    public: StrictBool = True
    members: list[UserRef] = Field(default_factory=list, max_length=10_000)
    admins: list[UserRef] = Field(default_factory=list, max_length=1_000)


class MembershipChange(Strict):
    user: UserRef
    role: Literal["member", "admin"] | None


class FieldSpec(Strict):
    name: StrictStr = Field(min_length=1, max_length=64, json_schema_extra=_NAME_DOC)
    type: Literal["string", "text", "int", "float", "date", "select", "user", "users"]
    label: StrictStr | None = Field(None, max_length=200)
    required: StrictBool = False
    read_permission: Literal["all", "members", "admins"] = "all"
    notify: StrictBool = False
    options: list[StrictStr] | None = Field(None, max_length=200)


class Semantics(Strict):
    title: StrictStr | None = None
    status: StrictStr | None = None
    open_values: list[StrictStr] | None = None
    assigned_to: StrictStr | None = None


class GlobalList(Strict):
    addresses: list[StrictStr] = Field(default_factory=list, max_length=500, description="plain addresses")
    users: list[UserRef] = Field(default_factory=list, max_length=500)
    on_updates: StrictBool = True
    check_permissions: StrictBool = True


class NotificationSettings(Strict):
    mode: Literal["all_updates", "creation_only", "status_change_only", "stopped"] = "all_updates"
    lists: list[GlobalList] = Field(default_factory=list, max_length=50)


class TrackerCreate(Strict):
    project_id: StrictInt = Field(ge=1)
    name: StrictStr = Field(min_length=1, max_length=64, json_schema_extra=_NAME_DOC)
    item_name: StrictStr | None = Field(None, min_length=1, max_length=32, json_schema_extra=_NAME_DOC)
    fields: list[FieldSpec] = Field(min_length=1, max_length=100)
    semantics: Semantics = Field(default_factory=Semantics)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)


class ArtifactCreate(Strict):
    values: dict[StrictStr, Any] = Field(default_factory=dict, max_length=100)
    comment: StrictStr | None = Field(None, max_length=65_535)
    comment_private: StrictBool = False


class ArtifactUpdate(ArtifactCreate):
    version: StrictInt | None = Field(
        None, description="If given, the update fails with 409 unless it matches."
    )


class SubscriptionChange(Strict):
    """An artifact subscription: ``default`` (told when another reason applies), ``following`` (told of
    every change) or ``unsubscribed`` (told nothing, except when @mentioned)."""

    state: Literal["default", "following", "unsubscribed"]


class TrackerSubscriptionChange(Strict):
    """A tracker subscription: ``unsubscribed`` (told nothing of its artifacts, except when @mentioned)
    or ``default``; ``following`` is the 0.1 spelling of ``default`` and means the same."""

    state: Literal["default", "unsubscribed", "following"]
