"""Tracker services: a tracker's fields, semantics and notification settings, validated as one spec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from herald.tracker import validate
from herald.tracker.errors import Conflict, InvalidInput, NotFound
from herald.tracker.models import (
    Field,
    FieldType,
    GlobalNotification,
    NotificationMode,
    ReadPermission,
    Tracker,
)
from herald.tracker.projects import get_project
from herald.tracker.users import resolve_user

__all__ = [
    "SpecProblems",
    "create_tracker",
    "get_tracker",
    "infer_semantic",
    "semantics_notes",
    "set_notifications",
]

T = TypeVar("T")
MAX_FIELDS = 100
MAX_OPTIONS = 200
MAX_LIST_ENTRIES = 500
_SPEC_KEYS = {"project_id", "name", "item_name", "fields", "semantics", "notifications"}
_FIELD_KEYS = {"name", "label", "type", "required", "read_permission", "notify", "options"}
_SEMANTIC_KEYS = {"title", "status", "open_values", "assigned_to"}
_NOTIF_KEYS = {"mode", "lists"}
_LIST_KEYS = {"addresses", "users", "on_updates", "check_permissions"}


def create_tracker(session: Session, spec: Any) -> Tracker:
    """Create a tracker from a spec (the JSON body of ``POST /api/trackers``, documented in docs/api.md)."""
    spec = validate.mapping(spec, "tracker", _SPEC_KEYS, {"project_id", "name", "fields"})
    project = get_project(session, validate.positive_id(spec["project_id"], "project_id"))
    name = validate.name(spec["name"], "name")
    if session.scalar(select(Tracker.id).where(Tracker.project_id == project.id, Tracker.name == name)):
        raise Conflict(f"project {project.name!r} already has a tracker named {name!r}")
    # Every problem of the spec is reported at once, not stage by stage: each part is checked on a
    # tracker not yet in the session, and only a spec without problems is stored.
    problems = _Problems()
    item_name = problems.check(validate.name, spec.get("item_name", name.rstrip("s") or name), "item_name")
    tracker = Tracker(project_id=project.id, name=name, item_name=(item_name or name)[:32], open_values=[])
    tracker.notification_mode = NotificationMode.ALL_UPDATES
    tracker.fields = _fields(spec["fields"], problems)
    if tracker.fields:
        problems.check(_semantics, tracker, spec.get("semantics", {}))
    problems.check(set_notifications, session, tracker, spec.get("notifications", {}))
    problems.raise_any()
    session.add(tracker)
    session.flush()
    _semantics(tracker, spec.get("semantics", {}))  # again, now that the fields have ids
    session.flush()
    return tracker


class _Problems:
    """The InvalidInput errors found while checking one spec, raised together as one."""

    def __init__(self) -> None:
        self.found: list[InvalidInput] = []

    def check(self, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except SpecProblems as exc:
            self.found.extend(exc.problems)
            return None
        except InvalidInput as exc:
            self.found.append(exc)
            return None

    def raise_any(self) -> None:
        if len(self.found) == 1:
            raise self.found[0]
        if self.found:
            raise SpecProblems(self.found)


class SpecProblems(InvalidInput):
    """Several problems of one spec; ``field`` is the first one's, ``problems`` holds each of them."""

    def __init__(self, problems: list[InvalidInput]) -> None:
        message = "; ".join(p.message for p in problems)
        super().__init__(f"{len(problems)} problems: {message}", problems[0].field)
        self.problems = problems


def _fields(raw: Any, problems: _Problems) -> list[Field]:
    """The fields of a spec; an empty list if any of them has a problem (each one is in ``problems``)."""
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_FIELDS:
        problems.check(_refuse, f"fields must be a list of 1 to {MAX_FIELDS} field definitions", "fields")
        return []
    seen: set[str] = set()
    fields = [problems.check(_field, i, item, seen) for i, item in enumerate(raw)]
    return [f for f in fields if f is not None] if all(fields) else []


def _refuse(message: str, where: str) -> None:
    raise InvalidInput(message, where)


def _field(i: int, item: Any, seen: set[str]) -> Field:
    where = f"fields[{i}]"
    item = validate.mapping(item, where, _FIELD_KEYS, {"name", "type"})
    fname = validate.name(item["name"], f"{where}.name")
    if fname in seen:
        raise InvalidInput(f"{where}.name {fname!r} is used twice", f"{where}.name")
    seen.add(fname)
    ftype = FieldType(validate.choice(item["type"], f"{where}.type", tuple(FieldType)))
    perm = validate.choice(
        item.get("read_permission", "all"), f"{where}.read_permission", tuple(ReadPermission)
    )
    notify = validate.boolean(item.get("notify", False), f"{where}.notify")
    if notify and ftype not in (FieldType.USER, FieldType.USERS):
        raise InvalidInput(f"{where}.notify applies to user and users fields only", f"{where}.notify")
    options = _options(item.get("options"), ftype, where)
    return Field(
        name=fname,
        label=validate.line(item.get("label", fname.replace("_", " ").capitalize()), f"{where}.label"),
        type=ftype,
        required=validate.boolean(item.get("required", False), f"{where}.required"),
        read_permission=ReadPermission(perm),
        notify=notify,
        options=options,
        position=i,
    )


def _options(raw: Any, ftype: FieldType, where: str) -> list[str]:
    if ftype is not FieldType.SELECT:
        if raw not in (None, []):
            raise InvalidInput(f"{where}.options applies to select fields only", f"{where}.options")
        return []
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_OPTIONS:
        raise InvalidInput(f"{where}.options must list 1 to {MAX_OPTIONS} values", f"{where}.options")
    options = [validate.line(o, f"{where}.options", max_len=100, allow_empty=False) for o in raw]
    if len(set(options)) != len(options):
        raise InvalidInput(f"{where}.options has a value twice", f"{where}.options")
    return options


def _semantics(tracker: Tracker, raw: Any) -> None:
    raw = validate.mapping(raw, "semantics", _SEMANTIC_KEYS)

    def pick(key: str, types: tuple[FieldType, ...]) -> Field | None:
        if raw.get(key) is None:
            return None
        field = tracker.field_by_name(raw[key]) if isinstance(raw[key], str) else None
        if field is None:
            raise InvalidInput(f"semantics.{key} must name one of the tracker's fields", f"semantics.{key}")
        if field.type not in types:
            allowed = " or ".join(t.value for t in types)
            raise InvalidInput(f"semantics.{key} must be a {allowed} field", f"semantics.{key}")
        return field

    def pick_or_infer(key: str, types: tuple[FieldType, ...]) -> Field | None:
        return pick(key, types) if key in raw else infer_semantic(tracker, key)

    title = pick_or_infer("title", _SEMANTIC_TYPES["title"])
    status = pick_or_infer("status", _SEMANTIC_TYPES["status"])
    assigned = pick_or_infer("assigned_to", _SEMANTIC_TYPES["assigned_to"])
    tracker.title_field_id = title.id if title else None
    tracker.status_field_id = status.id if status else None
    tracker.assigned_to_field_id = assigned.id if assigned else None
    open_values = raw.get("open_values", status.options[:1] if status else [])
    if not isinstance(open_values, list) or (status is None and open_values):
        raise InvalidInput(
            "semantics.open_values must list values of the status field", "semantics.open_values"
        )
    if status is not None and any(v not in status.options for v in open_values):
        raise InvalidInput(
            "semantics.open_values must list values of the status field", "semantics.open_values"
        )
    tracker.open_values = list(open_values)


_SEMANTIC_TYPES: dict[str, tuple[FieldType, ...]] = {
    "title": (FieldType.STRING,),
    "status": (FieldType.SELECT,),
    "assigned_to": (FieldType.USER, FieldType.USERS),
}
# The names trackers give these fields. A semantic left out of a spec is taken from a field of the right
# type with one of these names when exactly one field qualifies; never guessed otherwise.
_CONVENTIONAL_NAMES = {
    "title": frozenset({"title", "summary", "subject", "name"}),
    "status": frozenset({"status", "state"}),
    "assigned_to": frozenset({"assigned_to", "assignee", "assigned", "owner"}),
}
_UNSET_CONSEQUENCE = {
    "title": "mail subjects read '[{item} #N]' with no title",
    "status": "status_change_only notifies nothing and no value counts as open",
    "assigned_to": "users in user fields are told as 'cc', never 'assigned'",
}


def infer_semantic(tracker: Tracker, key: str) -> Field | None:
    """The field that ``semantics.<key>`` means when a spec leaves it out, if that is unambiguous: the one
    field of the right type with a conventional name, or for the title the tracker's only string field."""
    typed = [f for f in tracker.fields if f.type in _SEMANTIC_TYPES[key]]
    named = [f for f in typed if f.name in _CONVENTIONAL_NAMES[key]]
    if len(named) == 1:
        return named[0]
    if key == "title" and len(typed) == 1 and not named:
        return typed[0]
    return None


def semantics_notes(tracker: Tracker, spec: Any) -> list[str]:
    """What a client should know of the tracker's semantics after :func:`create_tracker`: each semantic
    inferred (it was not in the spec) and each left unset, with what follows from it."""
    given = spec.get("semantics", {}) if isinstance(spec, dict) else {}
    given = given if isinstance(given, dict) else {}
    ids = {"title": tracker.title_field_id, "status": tracker.status_field_id}
    ids["assigned_to"] = tracker.assigned_to_field_id
    notes = []
    for key, field_id in ids.items():
        field = tracker.field_by_id(field_id) if field_id else None
        if field is not None and key not in given:
            notes.append(f"semantics.{key} inferred: field {field.name!r}")
        elif field is None:
            consequence = _UNSET_CONSEQUENCE[key].format(item=tracker.item_name)
            notes.append(f"semantics.{key} is not set: {consequence}")
    return notes


def set_notifications(session: Session, tracker: Tracker, raw: Any) -> None:
    """Replace the tracker's notification mode and global lists."""
    raw = validate.mapping(raw, "notifications", _NOTIF_KEYS)
    problems = _Problems()
    mode = problems.check(
        validate.choice, raw.get("mode", "all_updates"), "notifications.mode", tuple(NotificationMode)
    )
    lists_raw = raw.get("lists", [])
    if not isinstance(lists_raw, list) or len(lists_raw) > 50:
        problems.check(
            _refuse, "notifications.lists must be a list of at most 50 lists", "notifications.lists"
        )
        lists_raw = []
    lists = [problems.check(_global_list, session, i, item) for i, item in enumerate(lists_raw)]
    problems.raise_any()
    tracker.notification_mode = NotificationMode(mode) if mode else NotificationMode.ALL_UPDATES
    tracker.global_lists = [g for g in lists if g is not None]


def _global_list(session: Session, i: int, item: Any) -> GlobalNotification:
    where = f"notifications.lists[{i}]"
    item = validate.mapping(item, where, _LIST_KEYS)
    addresses = item.get("addresses", [])
    users = item.get("users", [])
    if not isinstance(addresses, list) or not isinstance(users, list):
        raise InvalidInput(f"{where}.addresses and .users must be lists", where)
    if len(addresses) + len(users) > MAX_LIST_ENTRIES:
        raise InvalidInput(f"{where} may hold at most {MAX_LIST_ENTRIES} entries", where)
    return GlobalNotification(
        addresses=sorted(
            {validate.email(a, f"{where}.addresses[{j}]").lower() for j, a in enumerate(addresses)}
        ),
        user_ids=sorted({resolve_user(session, u, f"{where}.users").id for u in users}),
        on_updates=validate.boolean(item.get("on_updates", True), f"{where}.on_updates"),
        check_permissions=validate.boolean(item.get("check_permissions", True), f"{where}.check_permissions"),
    )


def get_tracker(session: Session, tracker_id: int) -> Tracker:
    tracker = session.get(Tracker, tracker_id)
    if tracker is None:
        raise NotFound(f"tracker {tracker_id} does not exist")
    return tracker
