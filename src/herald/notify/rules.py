"""The recipient rules as a pure function over plain data, so they can be read, tested and property-tested
without a database. :mod:`herald.notify.recipients` loads the facts and calls :func:`select_recipients`.

Who is a candidate (issue 3): users in notifying user fields (the assigned-to semantic field gives the
``assigned`` reason, other user fields flagged ``notify`` give ``cc``), the submitter, the commentators of
the artifact, users @mentioned in this changeset's comment, the artifact's followers, and the tracker's
global lists (a list with ``on_updates = false`` hears of creations only).

Then, in this order:

1. tracker mode: ``stopped`` notifies no one, ``creation_only`` no update, ``status_change_only`` only
   changesets that change the status field (a creation that sets the status counts);
2. a bare address on a list that belongs to registered users brings those users in, with their own grants;
   the address also stays a list recipient of its own (an anonymous reader), so a user's preference
   (unsubscription, suspension, "not my own changes") never silences a global list (issue 9, defect 2);
3. per candidate: suspended users go; the author goes unless they asked for their own changes; a user who
   unsubscribed from the artifact or the tracker keeps only an @mention;
4. access: who cannot read the artifact goes, whatever brought them (a list with ``check_permissions =
   false`` skips *field* checks only, never artifact visibility; a bare address is an anonymous reader: public
   projects only, ``all`` fields only, public comments only); who can read nothing of this changeset (no
   readable changed field, no readable comment) goes; a user field counts only for those who may read it
   and a mention only for those who may read the comment, so that the reason itself reveals nothing;
5. addresses that are not one plain ASCII mailbox go (they could not be put in a header safely), each with
   a warning in the log naming the reason;
6. one mail per address (case-insensitive): the strongest reason wins, then a registered user over an
   anonymous address, then the lowest user id.

Grants add up: a user brought by several sources reads with the widest of their remaining grants (a
``check_permissions = false`` list widens field access only while that list still counts for them).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from herald.notify import sanitize
from herald.notify.sanitize import address_key
from herald.tracker.models import NotificationMode, ReadPermission, Role
from herald.tracker.validate import address_problem

__all__ = [
    "REASON_ORDER",
    "Access",
    "ChangeFacts",
    "GlobalList",
    "Person",
    "Reason",
    "Selection",
    "field_readable",
    "select_recipients",
]


log = logging.getLogger("herald.notify")


class Reason(enum.StrEnum):
    """Why a recipient gets the mail; declared strongest first (see :data:`REASON_ORDER`)."""

    ASSIGNED = "assigned"
    SUBMITTER = "submitter"
    CC = "cc"
    MENTIONED = "mentioned"
    COMMENTED = "commented"
    FOLLOWING = "following"
    LIST = "list"


# When several reasons apply, the first one here is the one shown. The order is the issue's own list: the
# more personal the tie to the artifact, the stronger the reason.
REASON_ORDER: tuple[Reason, ...] = tuple(Reason)
_RANK = {reason: i for i, reason in enumerate(REASON_ORDER)}


@dataclass(frozen=True)
class Person:
    """What the rules need to know of a registered user."""

    user_id: int
    address: str
    active: bool = True
    role: Role | None = None  # role in the artifact's project; None: not a member
    notify_own_changes: bool = False


@dataclass(frozen=True)
class GlobalList:
    """A tracker-wide notification list."""

    user_ids: frozenset[int] = frozenset()
    addresses: frozenset[str] = frozenset()
    on_updates: bool = True
    check_permissions: bool = True


@dataclass(frozen=True)
class ChangeFacts:
    """Everything the rules look at for one changeset, as plain values."""

    author_id: int
    is_creation: bool
    project_public: bool
    field_permissions: Mapping[int, ReadPermission]  # every field of the tracker
    changed_field_ids: frozenset[int]
    mode: NotificationMode = NotificationMode.ALL_UPDATES
    status_changed: bool = False
    has_comment: bool = False
    comment_private: bool = False
    submitter_id: int | None = None
    # Notifying user(s) fields: field id -> the users in it as of this changeset.
    notifying_fields: Mapping[int, frozenset[int]] = field(default_factory=dict)
    assigned_field_id: int | None = None  # the one of them whose users are "assigned"; the others "cc"
    commentator_ids: frozenset[int] = frozenset()
    mentioned_ids: frozenset[int] = frozenset()
    follower_ids: frozenset[int] = frozenset()
    unsubscribed_ids: frozenset[int] = frozenset()  # from the artifact or from the tracker
    lists: tuple[GlobalList, ...] = ()
    # Every user named above (ids missing here are ignored: a user deleted meanwhile).
    people: Mapping[int, Person] = field(default_factory=dict)
    # address_key(address) -> ids of the registered users whose email it is.
    address_owners: Mapping[str, frozenset[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Access:
    """What one recipient may read of this changeset's artifact."""

    field_ids: frozenset[int]
    comment: bool


@dataclass(frozen=True)
class Selection:
    """One recipient chosen by the rules. ``user_id`` is None for a bare list address."""

    address: str
    user_id: int | None
    reason: Reason
    access: Access


@dataclass(frozen=True)
class _Source:
    reason: Reason
    skips_field_checks: bool = False
    field_id: int | None = None  # counts only for a reader of this field (it names them)
    needs_comment: bool = False  # counts only for a reader of the comment (it mentions them)


def field_readable(permission: ReadPermission, role: Role | None) -> bool:
    """The field rule of :mod:`herald.tracker.permissions`, for a reader who can read the artifact."""
    if permission is ReadPermission.ALL:
        return True
    if permission is ReadPermission.MEMBERS:
        return role is not None
    return role is Role.ADMIN


def _mode_allows(facts: ChangeFacts) -> bool:
    if facts.mode is NotificationMode.STOPPED:
        return False
    if facts.mode is NotificationMode.CREATION_ONLY:
        return facts.is_creation
    if facts.mode is NotificationMode.STATUS_CHANGE_ONLY:
        return facts.status_changed
    return True


def _candidates(facts: ChangeFacts) -> tuple[dict[int, set[_Source]], dict[str, set[_Source]]]:
    """Sources per user id and per bare address (keyed by :func:`address_key`)."""
    users: dict[int, set[_Source]] = {}
    bare: dict[str, set[_Source]] = {}
    bare_address: dict[str, str] = {}

    def add(ids: Iterable[int], source: _Source) -> None:
        for uid in ids:
            users.setdefault(uid, set()).add(source)

    for fid, user_ids in facts.notifying_fields.items():
        reason = Reason.ASSIGNED if fid == facts.assigned_field_id else Reason.CC
        add(user_ids, _Source(reason, field_id=fid))
    if facts.submitter_id is not None:
        add([facts.submitter_id], _Source(Reason.SUBMITTER))
    add(facts.mentioned_ids, _Source(Reason.MENTIONED, needs_comment=True))
    add(facts.commentator_ids, _Source(Reason.COMMENTED))
    add(facts.follower_ids, _Source(Reason.FOLLOWING))
    for glist in facts.lists:
        if not (glist.on_updates or facts.is_creation):
            continue
        source = _Source(Reason.LIST, skips_field_checks=not glist.check_permissions)
        add(glist.user_ids, source)
        for address in glist.addresses:
            key = address_key(address)
            # The owners read the list's mail with their own grants; the address itself stays a list
            # recipient, so that no owner's preference (unsubscribed, suspended, "not my own changes")
            # silences it. When an owner is chosen, the one-per-address rule keeps theirs.
            add(facts.address_owners.get(key, ()), source)
            bare.setdefault(key, set()).add(source)
            bare_address.setdefault(key, address)
    return users, {bare_address[k]: v for k, v in bare.items()}


def _readable_change(facts: ChangeFacts, access: Access) -> bool:
    return access.comment or not access.field_ids.isdisjoint(facts.changed_field_ids)


def _access(facts: ChangeFacts, role: Role | None, anonymous: bool, skip_fields: bool) -> Access | None:
    """What a reader with ``role`` may read, or None if the artifact itself is out of reach."""
    if anonymous:
        if not facts.project_public:
            return None
        fields = (
            frozenset(facts.field_permissions)
            if skip_fields
            else frozenset(f for f, perm in facts.field_permissions.items() if perm is ReadPermission.ALL)
        )
        return Access(fields, facts.has_comment and not facts.comment_private)
    if not facts.project_public and role is None:
        return None
    fields = (
        frozenset(facts.field_permissions)
        if skip_fields
        else frozenset(f for f, perm in facts.field_permissions.items() if field_readable(perm, role))
    )
    # Skipping field checks never opens a private comment: that one is the project's members' business.
    comment = facts.has_comment and (not facts.comment_private or role is not None)
    return Access(fields, comment)


def _visible(sources: set[_Source], access: Access) -> set[_Source]:
    """Drop sources the reader could not see: "you are assigned" must not reveal an unreadable field,
    nor "you were mentioned" a private comment."""
    return {
        s
        for s in sources
        if (s.field_id is None or s.field_id in access.field_ids) and (access.comment or not s.needs_comment)
    }


def _strongest(sources: set[_Source]) -> Reason:
    return min((s.reason for s in sources), key=_RANK.__getitem__)


def select_recipients(facts: ChangeFacts) -> list[Selection]:
    """Apply the rules of this module to ``facts``; the result is sorted by address key."""
    if not _mode_allows(facts):
        return []
    by_user, by_address = _candidates(facts)
    chosen: list[Selection] = []
    for uid, sources in by_user.items():
        person = facts.people.get(uid)
        if person is None or not person.active:
            continue
        if uid == facts.author_id and not person.notify_own_changes:
            continue
        if uid in facts.unsubscribed_ids:
            sources = {s for s in sources if s.reason is Reason.MENTIONED}
            if not sources:
                continue
        skip_fields = any(s.skips_field_checks for s in sources)
        access = _access(facts, person.role, anonymous=False, skip_fields=skip_fields)
        if access is None or not _readable_change(facts, access):
            continue
        sources = _visible(sources, access)
        if not sources:
            continue
        chosen.append(Selection(person.address, uid, _strongest(sources), access))
    for address, sources in by_address.items():
        skip_fields = any(s.skips_field_checks for s in sources)
        access = _access(facts, None, anonymous=True, skip_fields=skip_fields)
        if access is None or not _readable_change(facts, access):
            continue
        chosen.append(Selection(address, None, _strongest(sources), access))
    return _one_per_address(_mailable(chosen))


def _mailable(selections: list[Selection]) -> list[Selection]:
    """The selections whose address can be mailed. The API refuses such addresses, so one here was stored
    before that check (or by hand): it is logged with the reason, never dropped silently."""
    kept = []
    for sel in selections:
        problem = address_problem(sel.address)
        if problem is None:
            kept.append(sel)
        else:
            log.warning(
                "recipient not mailed: address %r of %s %s",
                sanitize.header_text(sel.address, 254),
                f"user_id={sel.user_id}" if sel.user_id is not None else "a global list",
                problem,
            )
    return kept


def _one_per_address(selections: Iterable[Selection]) -> list[Selection]:
    best: dict[str, Selection] = {}

    def rank(s: Selection) -> tuple[int, int, int]:
        return (_RANK[s.reason], s.user_id is None, s.user_id or 0)

    for sel in selections:
        key = address_key(sel.address)
        if key not in best or rank(sel) < rank(best[key]):
            best[key] = sel
    return [best[k] for k in sorted(best)]
