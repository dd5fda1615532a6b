"""Load everything the notifier needs about one changeset, in a fixed number of queries.

The count does not grow with the number of recipients: users, roles and unsubscriptions are read with one
``IN`` query each, and the project's memberships are read for the people concerned only (a large project's
member list is never loaded).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.orm import Session, joinedload, lazyload, selectinload

from herald.notify.sanitize import address_key
from herald.notify.snapshot import replay
from herald.tracker.models import (
    Artifact,
    ArtifactSubscription,
    Changeset,
    Field,
    FieldChange,
    FieldType,
    Membership,
    Project,
    Role,
    SubscriptionState,
    Tracker,
    TrackerUnsubscription,
    User,
)

__all__ = ["ChangeContext", "load_context", "user_ids_in"]


@dataclass
class ChangeContext:
    """One changeset with its artifact, tracker, project and the people around it, read-only."""

    changeset: Changeset
    artifact: Artifact
    tracker: Tracker
    project: Project
    fields: dict[int, Field]  # the tracker's fields in display order
    values: dict[int, Any]  # the artifact's values right after this changeset
    changes: list[FieldChange]  # this changeset's effective changes (old != new), on existing fields
    users: dict[int, User]  # candidates, the author and every user named in a field shown
    roles: dict[int, Role]  # project roles of ``users`` (absent: not a member)
    commentator_ids: frozenset[int]
    follower_ids: frozenset[int]
    unsubscribed_ids: frozenset[int]  # from the artifact or from the whole tracker
    address_owners: dict[str, frozenset[int]]  # list address key -> users whose email it is

    @property
    def author(self) -> User | None:
        """The changeset's author (None if the user was deleted meanwhile)."""
        return self.users.get(self.changeset.author_id)

    @property
    def changed_field_ids(self) -> frozenset[int]:
        """Fields whose value this changeset really changed."""
        return frozenset(c.field_id for c in self.changes)

    @property
    def created_at(self) -> datetime:
        """The changeset's time, aware (SQLite hands back naive UTC datetimes)."""
        at = self.changeset.created_at
        return at.replace(tzinfo=UTC) if at.tzinfo is None else at

    @property
    def has_comment(self) -> bool:
        """True if this changeset carries a non-blank comment."""
        return bool(self.changeset.comment and self.changeset.comment.strip())

    def user_field_ids(self, field_id: int | None) -> frozenset[int]:
        """The users in a user(s) field as of this changeset."""
        field = self.fields.get(field_id) if field_id is not None else None
        if field is None or field.type not in (FieldType.USER, FieldType.USERS):
            return frozenset()
        return frozenset(user_ids_in(self.values.get(field.id)))


def user_ids_in(value: Any) -> Iterator[int]:
    """The user ids in a stored user or users value (an id or a list of ids); anything else is skipped."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            yield item


# The statements are built once, at import, with bind parameters: building a statement (coercing every
# clause, computing its cache key) cost more than running it.
_CHANGESET = (
    select(Changeset)
    .where(Changeset.id == bindparam("cs"))
    .options(
        selectinload(Changeset.changes),
        joinedload(Changeset.artifact)
        .joinedload(Artifact.tracker)
        .joinedload(Tracker.project)
        .options(lazyload(Project.memberships)),
        joinedload(Changeset.artifact).joinedload(Artifact.tracker).selectinload(Tracker.fields),
        joinedload(Changeset.artifact).joinedload(Artifact.tracker).selectinload(Tracker.global_lists),
    )
)
_HISTORY = (
    select(FieldChange.field_id, FieldChange.new_value)
    .join(Changeset, FieldChange.changeset_id == Changeset.id)
    .where(Changeset.artifact_id == bindparam("artifact"), Changeset.id <= bindparam("cs"))
    .order_by(Changeset.id, FieldChange.id)
)
_COMMENTATORS = (
    select(Changeset.author_id)
    .where(
        Changeset.artifact_id == bindparam("artifact"),
        Changeset.id <= bindparam("cs"),
        Changeset.comment.is_not(None),
        Changeset.comment != "",
    )
    .distinct()
)
_SUBSCRIPTIONS = select(ArtifactSubscription.user_id, ArtifactSubscription.state).where(
    ArtifactSubscription.artifact_id == bindparam("artifact")
)
_TRACKER_UNSUBSCRIBED = select(TrackerUnsubscription.user_id).where(
    TrackerUnsubscription.tracker_id == bindparam("tracker"),
    TrackerUnsubscription.user_id.in_(bindparam("ids", expanding=True)),
)
_ROLES = select(Membership.user_id, Membership.role).where(
    Membership.project_id == bindparam("project"), Membership.user_id.in_(bindparam("ids", expanding=True))
)
_USERS = select(User).where(User.id.in_(bindparam("ids", expanding=True)))
_USERS_OR_ADDRESSES = select(User).where(
    or_(
        User.id.in_(bindparam("ids", expanding=True)),
        func.lower(User.email).in_(bindparam("keys", expanding=True)),
    )
)


def load_context(session: Session, changeset_id: int) -> ChangeContext | None:
    """Everything about ``changeset_id``, or None if that changeset no longer exists."""
    changeset = session.execute(_CHANGESET, {"cs": changeset_id}).unique().scalar_one_or_none()
    if changeset is None:
        return None
    artifact = changeset.artifact
    tracker = artifact.tracker
    project = tracker.project
    fields = {f.id: f for f in sorted(tracker.fields, key=lambda f: (f.position, f.id))}

    at = {"artifact": artifact.id, "cs": changeset.id}
    history = session.execute(_HISTORY, at).all()
    values = {fid: v for fid, v in replay((fid, new) for fid, new in history).items() if fid in fields}
    changes = [c for c in changeset.changes if c.field_id in fields and c.old_value != c.new_value]

    commentator_ids = frozenset(session.scalars(_COMMENTATORS, at))
    subscriptions = session.execute(_SUBSCRIPTIONS, {"artifact": artifact.id}).all()
    follower_ids = frozenset(u for u, state in subscriptions if state is SubscriptionState.FOLLOWING)
    artifact_unsubscribed = frozenset(
        u for u, state in subscriptions if state is SubscriptionState.UNSUBSCRIBED
    )

    wanted: set[int] = {changeset.author_id, artifact.submitted_by}
    wanted |= commentator_ids | follower_ids | set(changeset.mentioned_user_ids or ())
    for glist in tracker.global_lists:
        wanted.update(glist.user_ids or ())
    wanted.update(_user_ids_named(fields, values, changes))
    list_addresses = {address_key(a) for g in tracker.global_lists for a in (g.addresses or ())}
    users = _load_users(session, wanted, list_addresses)

    owners: dict[str, set[int]] = {}
    for user in users.values():
        key = address_key(user.email)
        if key in list_addresses:
            owners.setdefault(key, set()).add(user.id)
    ids = list(users)
    tracker_unsubscribed = frozenset(
        session.scalars(_TRACKER_UNSUBSCRIBED, {"tracker": tracker.id, "ids": ids})
    )
    roles: dict[int, Role] = {
        uid: role for uid, role in session.execute(_ROLES, {"project": project.id, "ids": ids})
    }
    return ChangeContext(
        changeset=changeset,
        artifact=artifact,
        tracker=tracker,
        project=project,
        fields=fields,
        values=values,
        changes=changes,
        users=users,
        roles=roles,
        commentator_ids=commentator_ids,
        follower_ids=follower_ids,
        unsubscribed_ids=artifact_unsubscribed | tracker_unsubscribed,
        address_owners={k: frozenset(v) for k, v in owners.items()},
    )


def _user_ids_named(
    fields: dict[int, Field], values: dict[int, Any], changes: Iterable[FieldChange]
) -> set[int]:
    """Users named in user(s) fields: now (recipients, snapshot) and before/after this change (display)."""
    user_fields = {fid for fid, f in fields.items() if f.type in (FieldType.USER, FieldType.USERS)}
    named = {uid for fid in user_fields for uid in user_ids_in(values.get(fid))}
    for change in changes:
        if change.field_id in user_fields:
            named.update(user_ids_in(change.old_value))
            named.update(user_ids_in(change.new_value))
    return named


def _load_users(session: Session, ids: set[int], address_keys: set[str]) -> dict[int, User]:
    if address_keys:
        rows = session.scalars(_USERS_OR_ADDRESSES, {"ids": list(ids), "keys": list(address_keys)})
    else:
        rows = session.scalars(_USERS, {"ids": list(ids)})
    return {u.id: u for u in rows}
