"""The tracker schema: users, projects, trackers and their fields, artifacts, changesets, subscriptions.

The notification outbox and the delivery ledger share this metadata (they commit with the change) but are
defined and written by :mod:`herald.outbox` alone."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend: SQLite stores no offset and hands back naive
    values, which would compare wrongly with aware ones and print without their zone in the API."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


def enum_column(cls: type[enum.Enum]) -> Enum:
    """An enum column that stores the value as a plain string."""
    # Store the value, not the member name, and as a plain string so adding a member needs no DB type change.
    return Enum(cls, native_enum=False, values_callable=lambda e: [m.value for m in e], length=32)


class Language(enum.StrEnum):
    EN = "en"
    FR = "fr"


class MailFormat(enum.StrEnum):
    HTML = "html"
    TEXT = "text"


class UserStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Role(enum.StrEnum):
    MEMBER = "member"
    ADMIN = "admin"


class FieldType(enum.StrEnum):
    STRING = "string"
    TEXT = "text"
    INT = "int"
    FLOAT = "float"
    DATE = "date"
    SELECT = "select"
    USER = "user"
    USERS = "users"


class ReadPermission(enum.StrEnum):
    ALL = "all"
    MEMBERS = "members"
    ADMINS = "admins"


class NotificationMode(enum.StrEnum):
    ALL_UPDATES = "all_updates"
    CREATION_ONLY = "creation_only"
    STATUS_CHANGE_ONLY = "status_change_only"
    STOPPED = "stopped"


class SubscriptionState(enum.StrEnum):
    FOLLOWING = "following"
    UNSUBSCRIBED = "unsubscribed"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    real_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(254))
    language: Mapped[Language] = mapped_column(enum_column(Language), default=Language.EN)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    mail_format: Mapped[MailFormat] = mapped_column(enum_column(MailFormat), default=MailFormat.HTML)
    notify_own_changes: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[UserStatus] = mapped_column(enum_column(UserStatus), default=UserStatus.ACTIVE)
    # Only a SHA-256 of the token is kept: a leaked database must not hand out working credentials.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def active(self) -> bool:
        return self.status is UserStatus.ACTIVE


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    public: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="project", cascade="all, delete-orphan", lazy="selectin"
    )

    def role_of(self, user_id: int) -> Role | None:
        for m in self.memberships:
            if m.user_id == user_id:
                return m.role
        return None


class Membership(Base):
    __tablename__ = "memberships"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[Role] = mapped_column(enum_column(Role), default=Role.MEMBER)

    project: Mapped[Project] = relationship(back_populates="memberships")


class Tracker(Base):
    __tablename__ = "trackers"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    item_name: Mapped[str] = mapped_column(String(32))
    notification_mode: Mapped[NotificationMode] = mapped_column(
        enum_column(NotificationMode), default=NotificationMode.ALL_UPDATES
    )
    # Semantics: which fields carry meaning. The notifier reads these, never field names.
    title_field_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status_field_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    assigned_to_field_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    open_values: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    project: Mapped[Project] = relationship(lazy="joined", innerjoin=True)
    fields: Mapped[list[Field]] = relationship(
        back_populates="tracker", cascade="all, delete-orphan", order_by="Field.position", lazy="selectin"
    )
    global_lists: Mapped[list[GlobalNotification]] = relationship(
        back_populates="tracker", cascade="all, delete-orphan", lazy="selectin"
    )

    def field_by_id(self, field_id: int) -> Field | None:
        return next((f for f in self.fields if f.id == field_id), None)

    def field_by_name(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


class Field(Base):
    __tablename__ = "fields"
    __table_args__ = (UniqueConstraint("tracker_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tracker_id: Mapped[int] = mapped_column(ForeignKey("trackers.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(200))
    type: Mapped[FieldType] = mapped_column(enum_column(FieldType))
    required: Mapped[bool] = mapped_column(Boolean, default=False)
    read_permission: Mapped[ReadPermission] = mapped_column(
        enum_column(ReadPermission), default=ReadPermission.ALL
    )
    notify: Mapped[bool] = mapped_column(Boolean, default=False)
    options: Mapped[list[str]] = mapped_column(JSON, default=list)
    position: Mapped[int] = mapped_column(Integer, default=0)

    tracker: Mapped[Tracker] = relationship(back_populates="fields")


class GlobalNotification(Base):
    """A tracker-wide list: addresses and users told of every creation (and of updates if ``on_updates``)."""

    __tablename__ = "global_notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tracker_id: Mapped[int] = mapped_column(ForeignKey("trackers.id", ondelete="CASCADE"), index=True)
    addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    user_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    on_updates: Mapped[bool] = mapped_column(Boolean, default=True)
    check_permissions: Mapped[bool] = mapped_column(Boolean, default=True)

    tracker: Mapped[Tracker] = relationship(back_populates="global_lists")


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tracker_id: Mapped[int] = mapped_column(ForeignKey("trackers.id", ondelete="CASCADE"), index=True)
    submitted_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Bumped by every changeset; lets a client detect that someone else changed the artifact meanwhile.
    version: Mapped[int] = mapped_column(Integer, default=1)
    # Current values keyed by str(field id); JSON keys are strings in every backend.
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    tracker: Mapped[Tracker] = relationship(lazy="joined", innerjoin=True)
    changesets: Mapped[list[Changeset]] = relationship(
        back_populates="artifact", order_by="Changeset.id", cascade="all, delete-orphan"
    )

    def value_of(self, field_id: int | None) -> Any:
        return None if field_id is None else self.values.get(str(field_id))


class Changeset(Base):
    __tablename__ = "changesets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    is_creation: Mapped[bool] = mapped_column(Boolean, default=False)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    comment_private: Mapped[bool] = mapped_column(Boolean, default=False)
    mentioned_user_ids: Mapped[list[int]] = mapped_column(JSON, default=list)

    artifact: Mapped[Artifact] = relationship(back_populates="changesets")
    changes: Mapped[list[FieldChange]] = relationship(
        back_populates="changeset", cascade="all, delete-orphan", lazy="selectin", order_by="FieldChange.id"
    )


class FieldChange(Base):
    __tablename__ = "field_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    changeset_id: Mapped[int] = mapped_column(ForeignKey("changesets.id", ondelete="CASCADE"), index=True)
    field_id: Mapped[int] = mapped_column(ForeignKey("fields.id", ondelete="CASCADE"))
    old_value: Mapped[Any] = mapped_column(JSON, nullable=True)
    new_value: Mapped[Any] = mapped_column(JSON, nullable=True)

    changeset: Mapped[Changeset] = relationship(back_populates="changes")


class ArtifactSubscription(Base):
    __tablename__ = "artifact_subscriptions"

    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[SubscriptionState] = mapped_column(enum_column(SubscriptionState))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TrackerUnsubscription(Base):
    __tablename__ = "tracker_unsubscriptions"

    tracker_id: Mapped[int] = mapped_column(ForeignKey("trackers.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WorkerHeartbeat(Base):
    """A live process of the worker pool (a worker or the supervisor), refreshed every few seconds.

    ``expires_at`` is the TTL: a row past it belongs to a process that died or hung. ``info`` holds what the
    process wants ``herald check`` to show (state, current changeset, jobs done, workers wanted...).
    """

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AdminSession(Base):
    """A signed-in admin console session (the admin pages' cookie names one of these rows).

    Stored server-side so every front end shares it and sign-out ends it everywhere. Only a SHA-256 of the
    cookie value is kept, as for API tokens; ``csrf_token`` guards the session's form posts.
    """

    __tablename__ = "admin_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    # A digest of the credential the session was opened with: rotating admin_token ends every session.
    credential_digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    client: Mapped[str] = mapped_column(String(64), default="")


class LeaderLease(Base):
    """A role that one process of the whole deployment plays at a time (the outbox relay), held by a lease.

    ``fence`` grows by one at every change of holder: a write made for the role checks it in the same
    transaction, so a holder that lost the lease (it was cut off, then came back) changes nothing. Written by
    ``herald.worker.leader``; read by ``herald check``.
    """

    __tablename__ = "leader_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(200), nullable=True)
    fence: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
