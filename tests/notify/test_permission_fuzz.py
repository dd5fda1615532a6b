"""Issue 9, "fuzzers in CI": hypothesis builds projects (public or private), users in every role (and
suspended), fields of every read permission (the title too), public and private comments, @mentions, cc and
global lists (bare addresses, users' own addresses, lists that skip field checks or hear creations only),
then renders every mail of a creation and an update as the delivery sends it. For every mail, nothing its
recipient may not read appears anywhere in it: headers, text or HTML, decoded or raw.

What a recipient may read is worked out here from the documented rules (docs/api.md, "Permissions" and
"Subscriptions"), not from herald's code. Every secret is a distinct marker (field values old and new, field
names and labels, comments), so a leak is a substring. Examples: ``HERALD_FUZZ_EXAMPLES`` (default 25).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from herald.config import load_settings
from herald.tracker.db import Database
from herald.tracker.models import Base
from tests.notify.conftest import BASE_URL, Mail, Scene

EXAMPLES = int(os.environ.get("HERALD_FUZZ_EXAMPLES", "25"))
USERS = ("ann", "ben", "cat", "dan")
EXTERNAL = ("ext0@lists.example.org", "ext1@lists.example.org")
PERMISSIONS = ("all", "members", "admins")
# The fields whose contents are secret; "title" is the title semantic (the subject), the others plain.
SECRET_FIELDS = ("title", "fzqa", "fzqb", "fzqc")


def marker(kind: str, n: int) -> str:
    """A token that occurs nowhere else and in no other marker: ``Zq<kind><n>Xv``."""
    return f"Zq{kind}{n:02d}Xv"


@dataclass(frozen=True)
class World:
    public: bool
    roles: dict[str, str | None]  # user -> None, "member" or "admin"
    suspended: frozenset[str]
    permissions: dict[str, str]  # secret field -> read permission
    cc: tuple[str, ...]
    lists: tuple[dict, ...]
    first_private: bool
    second_comment: bool
    second_private: bool
    changed: frozenset[str]  # secret fields the update changes
    mentions: tuple[str, ...]


@st.composite
def worlds(draw: st.DrawFn) -> World:
    users = st.sampled_from(USERS)
    lists = st.lists(
        st.fixed_dictionaries(
            {
                "addresses": st.lists(
                    st.sampled_from(EXTERNAL + tuple(f"{u}@example.org" for u in USERS)),
                    unique=True,
                    max_size=2,
                ),
                "users": st.lists(users, unique=True, max_size=2),
                "on_updates": st.booleans(),
                "check_permissions": st.booleans(),
            }
        ),
        max_size=2,
    )
    return World(
        public=draw(st.booleans()),
        roles={u: draw(st.sampled_from([None, "member", "admin"])) for u in USERS},
        suspended=frozenset(draw(st.lists(users, max_size=1))),
        permissions={f: draw(st.sampled_from(PERMISSIONS)) for f in SECRET_FIELDS},
        cc=tuple(draw(st.lists(users, unique=True, max_size=4))),
        lists=tuple(draw(lists)),
        first_private=draw(st.booleans()),
        second_comment=draw(st.booleans()),
        second_private=draw(st.booleans()),
        changed=frozenset(draw(st.lists(st.sampled_from(SECRET_FIELDS), unique=True, min_size=1))),
        mentions=tuple(draw(st.lists(users, unique=True, max_size=2))),
    )


@dataclass
class Secrets:
    """Each secret marker with the class that decides who may read it."""

    of_field: dict[str, set[str]] = field(default_factory=dict)  # field -> its markers (name, label, values)
    public_comments: set[str] = field(default_factory=set)
    private_comments: set[str] = field(default_factory=set)

    def every(self) -> set[str]:
        return set().union(*self.of_field.values(), self.public_comments, self.private_comments)


def build(scene: Scene, w: World) -> tuple[list[int], Secrets]:
    """The world in a database: a creation and an update by an author who is a project admin."""
    secrets = Secrets()
    for name in USERS:
        scene.user(name)
    scene.user("author")
    members = [u for u, r in w.roles.items() if r == "member"]
    admins = [u for u, r in w.roles.items() if r == "admin"] + ["author"]
    project = scene.project("proj", public=w.public, members=members + admins, admins=admins)
    fields = []
    for i, name in enumerate(SECRET_FIELDS):
        label = marker("label", i)
        secrets.of_field[name] = {label} | ({name} if name != "title" else set())
        fields.append(
            {"name": name, "label": label, "type": "string", "read_permission": w.permissions[name]}
        )
    fields.append({"name": "cc", "type": "users", "notify": True})
    lists = [dict(gl) for gl in w.lists]
    tracker = scene.tracker(project, fields=fields, semantics={"title": "title"}, lists=lists)
    for name in sorted(w.suspended):
        scene.suspend(name)

    values = {}
    for i, name in enumerate(SECRET_FIELDS):
        values[name] = marker("v1f", i)
        secrets.of_field[name].add(values[name])
    first_comment = marker("c", 1)
    (secrets.private_comments if w.first_private else secrets.public_comments).add(first_comment)
    active_cc = [u for u in w.cc if u not in w.suspended]
    created = scene.create(
        "author", tracker, comment=first_comment, private=w.first_private, cc=active_cc, **values
    )

    changes = {}
    for i, name in enumerate(SECRET_FIELDS):
        if name in w.changed:
            changes[name] = marker("v2f", i)
            secrets.of_field[name].add(changes[name])
    comment = None
    if w.second_comment:
        comment = " ".join([marker("c", 2), *(f"@{u}" for u in w.mentions)])
        (secrets.private_comments if w.second_private else secrets.public_comments).add(marker("c", 2))
    updated = scene.update(
        "author", scene.artifact_of(created), comment=comment, private=w.second_private, **changes
    )
    return [created, updated], secrets


def readable(w: World, secrets: Secrets, address: str, is_creation: bool) -> set[str]:
    """Everything the people who may read mail at ``address`` may read: the union over the registered user
    whose address it is and, if the address is on a list that hears this change, an anonymous reader."""
    allowed: set[str] = set()
    hearing = [gl for gl in w.lists if is_creation or gl["on_updates"]]
    user = address.split("@")[0] if address.endswith("@example.org") else None
    if user in w.roles and user not in w.suspended:
        role = w.roles[user]
        if w.public or role is not None:
            skips = any(
                not gl["check_permissions"] and (user in gl["users"] or address in gl["addresses"])
                for gl in hearing
            )
            for name, markers in secrets.of_field.items():
                perm = w.permissions[name]
                if (
                    skips
                    or perm == "all"
                    or (perm == "members" and role)
                    or (perm == "admins" and role == "admin")
                ):
                    allowed |= markers
            allowed |= secrets.public_comments
            if role is not None:
                allowed |= secrets.private_comments
    on_lists = [gl for gl in hearing if address in gl["addresses"]]
    if on_lists and w.public:  # an anonymous reader: public projects, public comments
        skips = any(not gl["check_permissions"] for gl in on_lists)
        for name, markers in secrets.of_field.items():
            if skips or w.permissions[name] == "all":
                allowed |= markers
        allowed |= secrets.public_comments
    return allowed


def address_of(key: str) -> str:
    return key if "@" in key else f"{key}@example.org"


def check_mail(key: str, mail: Mail, forbidden: set[str]) -> None:
    everything = mail.everything()
    raw = mail.raw.decode("ascii", "replace")
    leaked = sorted(s for s in forbidden if s in everything or s in raw)
    assert not leaked, f"mail to {key} shows {leaked} it may not read:\n{everything}"


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(w=worlds())
def test_no_mail_shows_what_its_recipient_may_not_read(w: World):
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'notify.db'}")
        try:
            Base.metadata.create_all(db.engine)
            scene = Scene(db, load_settings(env={"HERALD_BASE_URL": BASE_URL, "HERALD_DATA_DIR": tmp}))
            changesets, secrets = build(scene, w)
            every = secrets.every()
            for changeset, is_creation in zip(changesets, (True, False), strict=True):
                mails = scene.mails(changeset)
                event(f"{'creation' if is_creation else 'update'}: {min(len(mails), 4)}+ mails")
                for key, mail in mails.items():
                    address = address_of(key)
                    assert address != "author@example.org"  # the author did not ask for their own changes
                    check_mail(key, mail, every - readable(w, secrets, address, is_creation))
        finally:
            db.dispose()


def test_the_oracle_is_not_vacuous():
    """A world where someone may read less than everything, and gets a mail that shows what they may."""
    w = World(
        public=True,
        roles={"ann": "admin", "ben": "member", "cat": None, "dan": None},
        suspended=frozenset(),
        permissions={"title": "all", "fzqa": "members", "fzqb": "admins", "fzqc": "all"},
        cc=("ann", "ben", "cat"),
        lists=({"addresses": [EXTERNAL[0]], "users": [], "on_updates": True, "check_permissions": True},),
        first_private=True,
        second_comment=True,
        second_private=False,
        changed=frozenset({"fzqa", "fzqb", "fzqc"}),
        mentions=("dan",),
    )
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'notify.db'}")
        try:
            Base.metadata.create_all(db.engine)
            scene = Scene(db, load_settings(env={"HERALD_BASE_URL": BASE_URL, "HERALD_DATA_DIR": tmp}))
            (_, updated), secrets = build(scene, w)
            mails = scene.mails(updated)
        finally:
            db.dispose()
    assert {"ann", "ben", "cat", "dan", EXTERNAL[0]} <= set(mails)
    cat = mails["cat"].everything()
    assert marker("v2f", 3) in cat and marker("c", 2) in cat  # what cat may read is there...
    forbidden = secrets.every() - readable(w, secrets, "cat@example.org", False)
    assert marker("v2f", 1) in forbidden and marker("c", 1) in forbidden  # ...and the oracle forbids some
    check_mail("cat", mails["cat"], forbidden)
    assert marker("v2f", 2) in mails["ann"].everything()
