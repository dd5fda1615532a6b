"""The recipient rules over plain data: each rule alone, then properties over generated changesets."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.notify.rules import (
    REASON_ORDER,
    ChangeFacts,
    GlobalList,
    Person,
    Reason,
    select_recipients,
)
from herald.tracker.models import NotificationMode, ReadPermission, Role

TITLE, STATUS, NOTES, SCORE, ASSIGNEE, CC, SECRET_CC = 1, 2, 3, 4, 5, 6, 7
PERMS = {
    TITLE: ReadPermission.ALL,
    STATUS: ReadPermission.ALL,
    NOTES: ReadPermission.MEMBERS,
    SCORE: ReadPermission.ADMINS,
    ASSIGNEE: ReadPermission.ALL,
    CC: ReadPermission.ALL,
    SECRET_CC: ReadPermission.ADMINS,
}
AUTHOR, ADMIN, MEMBER, OUTSIDER, OTHER = 1, 2, 3, 4, 5


def person(uid: int, **kw) -> Person:
    return Person(user_id=uid, address=f"u{uid}@example.org", **kw)


PEOPLE = {
    AUTHOR: person(AUTHOR, role=Role.MEMBER),
    ADMIN: person(ADMIN, role=Role.ADMIN),
    MEMBER: person(MEMBER, role=Role.MEMBER),
    OUTSIDER: person(OUTSIDER),
    OTHER: person(OTHER),
}


def facts(assigned=frozenset(), cc=frozenset(), **kw) -> ChangeFacts:
    """Facts of an update to a public artifact's title, with ``assigned`` and ``cc`` user ids."""
    base = {
        "notifying_fields": {ASSIGNEE: frozenset(assigned), CC: frozenset(cc)},
        "assigned_field_id": ASSIGNEE,
        "author_id": AUTHOR,
        "is_creation": False,
        "project_public": True,
        "field_permissions": PERMS,
        "changed_field_ids": frozenset({TITLE}),
        "submitter_id": None,
        "people": PEOPLE,
    }
    base.update(kw)
    return ChangeFacts(**base)


def chosen(f: ChangeFacts) -> dict[object, Reason]:
    return {s.user_id if s.user_id is not None else s.address: s.reason for s in select_recipients(f)}


class TestSources:
    @pytest.mark.parametrize(
        ("field", "reason"),
        [
            ("assigned", Reason.ASSIGNED),
            ("cc", Reason.CC),
            ("mentioned_ids", Reason.MENTIONED),
            ("commentator_ids", Reason.COMMENTED),
            ("follower_ids", Reason.FOLLOWING),
        ],
    )
    def test_each_user_source(self, field, reason):
        assert chosen(facts(has_comment=True, **{field: frozenset({MEMBER})})) == {MEMBER: reason}

    def test_submitter(self):
        assert chosen(facts(submitter_id=MEMBER)) == {MEMBER: Reason.SUBMITTER}

    def test_global_list_users_and_addresses(self):
        glist = GlobalList(user_ids=frozenset({MEMBER}), addresses=frozenset({"team@example.org"}))
        assert chosen(facts(lists=(glist,))) == {MEMBER: Reason.LIST, "team@example.org": Reason.LIST}

    def test_list_for_creations_only_is_silent_on_updates(self):
        glist = GlobalList(addresses=frozenset({"team@example.org"}), on_updates=False)
        assert chosen(facts(lists=(glist,))) == {}
        assert chosen(facts(lists=(glist,), is_creation=True)) == {"team@example.org": Reason.LIST}

    def test_strongest_reason_wins_in_documented_order(self):
        assert REASON_ORDER[0] is Reason.ASSIGNED and REASON_ORDER[-1] is Reason.LIST
        every = frozenset({MEMBER})
        f = facts(
            follower_ids=every,
            commentator_ids=every,
            mentioned_ids=every,
            cc=every,
            lists=(GlobalList(user_ids=every),),
        )
        assert chosen(f) == {MEMBER: Reason.CC}
        assert chosen(replace(f, submitter_id=MEMBER)) == {MEMBER: Reason.SUBMITTER}
        assert chosen(replace(f, submitter_id=MEMBER, notifying_fields={ASSIGNEE: every})) == {
            MEMBER: Reason.ASSIGNED
        }

    def test_user_field_counts_only_for_its_readers(self):
        f = facts(notifying_fields={SECRET_CC: frozenset({MEMBER, ADMIN})})
        assert chosen(f) == {ADMIN: Reason.CC}
        assert chosen(replace(f, follower_ids=frozenset({MEMBER}))) == {
            ADMIN: Reason.CC,
            MEMBER: Reason.FOLLOWING,
        }

    def test_mention_counts_only_for_readers_of_the_comment(self):
        f = facts(has_comment=True, comment_private=True, mentioned_ids=frozenset({MEMBER, OUTSIDER}))
        assert chosen(f) == {MEMBER: Reason.MENTIONED}
        f = replace(f, follower_ids=frozenset({OUTSIDER}))
        assert chosen(f) == {MEMBER: Reason.MENTIONED, OUTSIDER: Reason.FOLLOWING}

    def test_unknown_user_ids_are_ignored(self):
        assert chosen(facts(follower_ids=frozenset({999}))) == {}


class TestRemovals:
    def test_suspended_user(self):
        people = {**PEOPLE, MEMBER: replace(PEOPLE[MEMBER], active=False)}
        assert chosen(facts(people=people, assigned=frozenset({MEMBER}))) == {}

    def test_author_unless_opted_in(self):
        assert chosen(facts(assigned=frozenset({AUTHOR}))) == {}
        people = {**PEOPLE, AUTHOR: replace(PEOPLE[AUTHOR], notify_own_changes=True)}
        assert chosen(facts(people=people, assigned=frozenset({AUTHOR}))) == {AUTHOR: Reason.ASSIGNED}

    def test_unsubscribed_keeps_only_a_mention(self):
        f = facts(
            assigned=frozenset({MEMBER}),
            follower_ids=frozenset({ADMIN}),
            unsubscribed_ids=frozenset({MEMBER, ADMIN}),
        )
        assert chosen(f) == {}
        mention = replace(f, mentioned_ids=frozenset({MEMBER}), has_comment=True)
        assert chosen(mention) == {MEMBER: Reason.MENTIONED}

    def test_duplicate_addresses_case_insensitive(self):
        people = {**PEOPLE, OTHER: Person(OTHER, "U3@Example.ORG")}  # MEMBER's address, other case
        f = facts(people=people, follower_ids=frozenset({OTHER}), assigned=frozenset({MEMBER}))
        result = select_recipients(f)
        assert [(s.user_id, s.reason) for s in result] == [(MEMBER, Reason.ASSIGNED)]

    def test_bare_address_of_a_registered_user_is_never_silenced_by_that_user(self):
        # Issue 9, defect 2: the author's own address on a list, the author not asking for own changes.
        glist = GlobalList(addresses=frozenset({"U1@example.org"}))
        f = facts(lists=(glist,), address_owners={"u1@example.org": frozenset({AUTHOR})})
        assert [(s.address, s.user_id, s.reason) for s in select_recipients(f)] == [
            ("U1@example.org", None, Reason.LIST)
        ]
        unsubscribed = replace(f, author_id=OTHER, unsubscribed_ids=frozenset({AUTHOR}))
        assert [s.user_id for s in select_recipients(unsubscribed)] == [None]

    def test_owner_of_a_list_address_reads_it_with_their_own_grants(self):
        glist = GlobalList(addresses=frozenset({"u3@example.org"}))  # MEMBER's address
        f = facts(lists=(glist,), address_owners={"u3@example.org": frozenset({MEMBER})})
        (sel,) = select_recipients(f)
        assert (sel.user_id, sel.reason) == (MEMBER, Reason.LIST)

    def test_private_project_non_members_whatever_the_source(self):
        everyone = frozenset(PEOPLE)
        glist = GlobalList(
            user_ids=everyone, addresses=frozenset({"team@example.org"}), check_permissions=False
        )
        f = facts(project_public=False, follower_ids=everyone, mentioned_ids=everyone, lists=(glist,))
        assert set(chosen(f)) == {ADMIN, MEMBER}

    def test_anonymous_reads_public_fields_of_public_projects_only(self):
        glist = GlobalList(addresses=frozenset({"team@example.org"}))
        only_notes = frozenset({NOTES})
        assert chosen(facts(lists=(glist,), changed_field_ids=only_notes)) == {}
        (sel,) = select_recipients(facts(lists=(glist,)))
        assert sel.access.field_ids == {f for f, perm in PERMS.items() if perm is ReadPermission.ALL}

    def test_list_without_permission_checks_skips_field_checks_only(self):
        glist = GlobalList(addresses=frozenset({"team@example.org"}), check_permissions=False)
        (sel,) = select_recipients(facts(lists=(glist,), changed_field_ids=frozenset({SCORE})))
        assert sel.access.field_ids == set(PERMS)
        assert chosen(facts(lists=(glist,), project_public=False)) == {}

    def test_reader_of_nothing_changed(self):
        f = facts(changed_field_ids=frozenset({SCORE}), follower_ids=frozenset({MEMBER, ADMIN}))
        assert chosen(f) == {ADMIN: Reason.FOLLOWING}

    def test_private_comment_reaches_members_only(self):
        f = facts(
            changed_field_ids=frozenset(),
            has_comment=True,
            comment_private=True,
            follower_ids=frozenset({MEMBER, OUTSIDER}),
        )
        assert chosen(f) == {MEMBER: Reason.FOLLOWING}
        assert set(chosen(replace(f, comment_private=False))) == {MEMBER, OUTSIDER}

    def test_unsafe_addresses_are_skipped(self):
        people = {**PEOPLE, OTHER: Person(OTHER, "x@example.org\r\nBcc: y@evil.org")}
        assert chosen(facts(people=people, follower_ids=frozenset({OTHER}))) == {}

    @pytest.mark.parametrize(
        ("mode", "creation", "status_changed", "notifies"),
        [
            (NotificationMode.ALL_UPDATES, False, False, True),
            (NotificationMode.CREATION_ONLY, True, False, True),
            (NotificationMode.CREATION_ONLY, False, True, False),
            (NotificationMode.STATUS_CHANGE_ONLY, False, True, True),
            (NotificationMode.STATUS_CHANGE_ONLY, False, False, False),
            (NotificationMode.STATUS_CHANGE_ONLY, True, False, False),
            (NotificationMode.STOPPED, True, True, False),
        ],
    )
    def test_tracker_mode(self, mode, creation, status_changed, notifies):
        f = facts(
            mode=mode,
            is_creation=creation,
            status_changed=status_changed,
            follower_ids=frozenset({MEMBER}),
        )
        assert bool(chosen(f)) is notifies


# --- properties -----------------------------------------------------------------------------------------

ids = st.frozensets(st.integers(1, 8), max_size=5)
roles = st.sampled_from([None, Role.MEMBER, Role.ADMIN])
addresses = st.sampled_from(
    ["a@example.org", "A@EXAMPLE.org", "b@example.org", "team@example.org", "u3@example.org", "bad address"]
)


@st.composite
def people_(draw) -> dict[int, Person]:
    out = {}
    for uid in draw(st.frozensets(st.integers(1, 8), min_size=1)):
        address = draw(st.one_of(st.just(f"u{uid}@example.org"), addresses))
        out[uid] = Person(uid, address, draw(st.booleans()), draw(roles), draw(st.booleans()))
    return out


@st.composite
def change_facts(draw) -> ChangeFacts:
    people = draw(people_())
    perms = draw(st.dictionaries(st.integers(1, 6), st.sampled_from(list(ReadPermission)), min_size=1))
    lists = draw(
        st.lists(
            st.builds(
                GlobalList,
                user_ids=ids,
                addresses=st.frozensets(addresses, max_size=3),
                on_updates=st.booleans(),
                check_permissions=st.booleans(),
            ),
            max_size=3,
        )
    )
    owners: dict[str, set[int]] = {}
    for uid, p in people.items():
        owners.setdefault(p.address.lower(), set()).add(uid)
    return ChangeFacts(
        author_id=draw(st.integers(1, 8)),
        is_creation=draw(st.booleans()),
        project_public=draw(st.booleans()),
        field_permissions=perms,
        changed_field_ids=draw(st.frozensets(st.integers(1, 7), max_size=4)),
        mode=draw(st.one_of(st.just(NotificationMode.ALL_UPDATES), st.sampled_from(list(NotificationMode)))),
        status_changed=draw(st.booleans()),
        has_comment=draw(st.booleans()),
        comment_private=draw(st.booleans()),
        submitter_id=draw(st.one_of(st.none(), st.integers(1, 8))),
        notifying_fields=draw(st.dictionaries(st.integers(1, 7), ids, max_size=3)),
        assigned_field_id=draw(st.one_of(st.none(), st.integers(1, 7))),
        commentator_ids=draw(ids),
        mentioned_ids=draw(ids),
        follower_ids=draw(ids),
        unsubscribed_ids=draw(ids),
        lists=tuple(lists),
        people=people,
        address_owners={k: frozenset(v) for k, v in owners.items()},
    )


def _may_read_artifact(f: ChangeFacts, user_id: int | None) -> bool:
    if user_id is None:
        return f.project_public
    return f.people[user_id].active and (f.project_public or f.people[user_id].role is not None)


@settings(max_examples=100, deadline=None)
@given(change_facts())
def test_no_recipient_lacks_read_access(f: ChangeFacts):
    for sel in select_recipients(f):
        assert _may_read_artifact(f, sel.user_id)
        assert sel.access.comment or sel.access.field_ids & f.changed_field_ids
        if sel.reason is Reason.MENTIONED:
            assert sel.access.comment
        if sel.reason in (Reason.ASSIGNED, Reason.CC):  # the field naming them is one they may read
            assert any(
                sel.user_id in u and fid in sel.access.field_ids for fid, u in f.notifying_fields.items()
            )
        if sel.access.comment:
            assert f.has_comment
            role = f.people[sel.user_id].role if sel.user_id is not None else None
            assert not f.comment_private or role is not None


@settings(max_examples=100, deadline=None)
@given(change_facts())
def test_no_address_twice_and_all_safe(f: ChangeFacts):
    keys = [s.address.lower() for s in select_recipients(f)]
    assert len(keys) == len(set(keys))
    assert "bad address" not in keys


@settings(max_examples=100, deadline=None)
@given(change_facts())
def test_author_absent_unless_opted_in_and_suspended_never(f: ChangeFacts):
    for sel in select_recipients(f):
        if sel.user_id is None:
            continue
        p = f.people[sel.user_id]
        assert p.active
        assert sel.user_id != f.author_id or p.notify_own_changes


@settings(max_examples=100, deadline=None)
@given(change_facts())
def test_no_user_preference_silences_a_list_address(f: ChangeFacts):
    """Issue 9, defect 2: every applicable list address an anonymous reader could be told about is mailed,
    whoever owns it and whatever they chose."""
    if f.mode is not NotificationMode.ALL_UPDATES or not f.project_public:
        return
    mailed = {s.address.lower() for s in select_recipients(f)}
    for g in f.lists:
        if not (g.on_updates or f.is_creation):
            continue
        readable = {fid for fid, p in f.field_permissions.items() if p is ReadPermission.ALL}
        if not g.check_permissions:
            readable = set(f.field_permissions)
        if not (readable & f.changed_field_ids or (f.has_comment and not f.comment_private)):
            continue
        for address in g.addresses:
            if address != "bad address":
                assert address.lower() in mailed


@settings(max_examples=100, deadline=None)
@given(change_facts())
def test_unsubscribed_only_by_mention_and_modes_hold(f: ChangeFacts):
    result = select_recipients(f)
    for sel in result:
        if sel.user_id in f.unsubscribed_ids:
            assert sel.reason is Reason.MENTIONED
    if f.mode is NotificationMode.STOPPED:
        assert result == []
    if f.mode is NotificationMode.CREATION_ONLY and not f.is_creation:
        assert result == []
    if f.mode is NotificationMode.STATUS_CHANGE_ONLY and not f.status_changed:
        assert result == []


def _fields_unchecked(f: ChangeFacts, user_id: int | None, address: str) -> bool:
    """True if an applicable list without permission checks names this recipient."""
    for g in f.lists:
        if g.check_permissions or not (g.on_updates or f.is_creation):
            continue
        if user_id is None and address.lower() in {a.lower() for a in g.addresses}:
            return True
        owned = {uid for a in g.addresses for uid in f.address_owners.get(a.lower(), ())}
        if user_id is not None and user_id in g.user_ids | owned:
            return True
    return False


@settings(max_examples=100, deadline=None)
@given(change_facts())
def test_field_access_follows_permissions_unless_a_list_skips_them(f: ChangeFacts):
    for sel in select_recipients(f):
        if _fields_unchecked(f, sel.user_id, sel.address):
            continue
        role = f.people[sel.user_id].role if sel.user_id is not None else None
        for fid in sel.access.field_ids:
            perm = f.field_permissions[fid]
            assert perm is ReadPermission.ALL or (
                role is not None and (perm is ReadPermission.MEMBERS or role is Role.ADMIN)
            )


@settings(max_examples=100, deadline=None)
@given(
    active=st.booleans(),
    role=roles,
    public=st.booleans(),
    perm=st.sampled_from(list(ReadPermission)),
    comment=st.sampled_from([None, "a comment"]),
    private=st.booleans(),
)
def test_rules_agree_with_tracker_permissions(active, role, public, perm, comment, private):
    """The rules re-state herald.tracker.permissions over plain data; they must never drift apart."""
    from herald.tracker import permissions
    from herald.tracker.models import Changeset, Field, Membership, Project, User, UserStatus

    user = User(id=1, status=UserStatus.ACTIVE if active else UserStatus.SUSPENDED)
    memberships = [] if role is None else [Membership(user_id=1, role=role)]
    project = Project(public=public, memberships=memberships)
    field = Field(id=1, read_permission=perm)
    changeset = Changeset(comment=comment, comment_private=private)
    f = ChangeFacts(
        author_id=99,
        is_creation=False,
        project_public=public,
        field_permissions={1: perm},
        changed_field_ids=frozenset({1}),
        has_comment=comment is not None,
        comment_private=private,
        follower_ids=frozenset({1}),
        people={1: Person(1, "u1@example.org", active, role)},
    )
    reads_field = permissions.can_read_field(user, field, project)
    reads_comment = permissions.can_read_comment(user, changeset, project)
    result = select_recipients(f)
    assert bool(result) == (reads_field or reads_comment)
    if result:
        assert (1 in result[0].access.field_ids) == reads_field
        assert result[0].access.comment == reads_comment
