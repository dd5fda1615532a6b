"""Who hears about a changeset: the database side of the rules in :mod:`herald.notify.rules`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from herald.notify.context import ChangeContext, load_context
from herald.notify.rules import (
    Access,
    ChangeFacts,
    GlobalList,
    Person,
    Reason,
    select_recipients,
)
from herald.notify.sanitize import address_key
from herald.tracker.models import Changeset, Language, MailFormat, User

__all__ = ["Recipient", "compute_recipients", "facts_of", "recipients_in"]

# A bare list address has no preferences; it reads mail like a newcomer would.
ANONYMOUS_LANGUAGE = Language.EN
ANONYMOUS_TIMEZONE = "UTC"
ANONYMOUS_FORMAT = MailFormat.HTML


@dataclass(frozen=True, eq=False)
class Recipient:
    """One person (or bare address) to mail about a changeset, with what they may read of it."""

    address: str
    user: User | None
    reason: Reason
    access: Access
    language: str
    timezone: str
    mail_format: MailFormat

    @property
    def user_id(self) -> int | None:
        """The recipient's user id, None for a bare list address."""
        return None if self.user is None else self.user.id


def facts_of(ctx: ChangeContext) -> ChangeFacts:
    """The plain facts the rules need, taken from a loaded changeset."""
    tracker, cs = ctx.tracker, ctx.changeset
    assigned_field = tracker.assigned_to_field_id
    # The assigned-to semantic always notifies (it is the "assigned" reason); other user fields when the
    # tracker flags them ``notify``.
    notifying = {
        fid: ctx.user_field_ids(fid) for fid, f in ctx.fields.items() if f.notify or fid == assigned_field
    }
    people = {
        uid: Person(
            user_id=uid,
            address=user.email,
            active=user.active,
            role=ctx.roles.get(uid),
            notify_own_changes=user.notify_own_changes,
        )
        for uid, user in ctx.users.items()
    }
    status_changed = tracker.status_field_id is not None and tracker.status_field_id in ctx.changed_field_ids
    return ChangeFacts(
        author_id=cs.author_id,
        is_creation=cs.is_creation,
        project_public=ctx.project.public,
        field_permissions={fid: f.read_permission for fid, f in ctx.fields.items()},
        changed_field_ids=ctx.changed_field_ids,
        mode=tracker.notification_mode,
        status_changed=status_changed,
        has_comment=ctx.has_comment,
        comment_private=cs.comment_private,
        submitter_id=ctx.artifact.submitted_by,
        notifying_fields={fid: ids for fid, ids in notifying.items() if ids},
        assigned_field_id=assigned_field,
        commentator_ids=ctx.commentator_ids,
        mentioned_ids=frozenset(cs.mentioned_user_ids or ()),
        follower_ids=ctx.follower_ids,
        unsubscribed_ids=ctx.unsubscribed_ids,
        lists=tuple(
            GlobalList(
                user_ids=frozenset(g.user_ids or ()),
                addresses=frozenset(g.addresses or ()),
                on_updates=g.on_updates,
                check_permissions=g.check_permissions,
            )
            for g in tracker.global_lists
        ),
        people=people,
        address_owners=ctx.address_owners,
    )


def recipients_in(ctx: ChangeContext) -> list[Recipient]:
    """The recipients of a loaded changeset, sorted by address."""
    out = []
    for sel in select_recipients(facts_of(ctx)):
        user = ctx.users.get(sel.user_id) if sel.user_id is not None else None
        if user is None:
            out.append(
                Recipient(
                    sel.address,
                    None,
                    sel.reason,
                    sel.access,
                    ANONYMOUS_LANGUAGE,
                    ANONYMOUS_TIMEZONE,
                    ANONYMOUS_FORMAT,
                )
            )
        else:
            out.append(
                Recipient(
                    sel.address,
                    user,
                    sel.reason,
                    sel.access,
                    str(user.language),
                    user.timezone,
                    user.mail_format,
                )
            )
    out.sort(key=lambda r: address_key(r.address))
    return out


def compute_recipients(session: Session, changeset: Changeset | int) -> list[Recipient]:
    """Who must hear about ``changeset`` (an object or an id), each with a reason and what they may read.

    An unknown changeset id has no recipients.
    """
    changeset_id = changeset if isinstance(changeset, int) else changeset.id
    ctx = load_context(session, changeset_id)
    return [] if ctx is None else recipients_in(ctx)
