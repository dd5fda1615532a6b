"""Issue 9, defect 6: one address grammar. What the API accepts is what the notifier mails; an address
that cannot be mailed is refused at input, and one that slipped into the database is logged, not dropped."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.notify import sanitize
from herald.notify.rules import ChangeFacts, GlobalList, select_recipients
from herald.tracker import validate
from herald.tracker.errors import InvalidInput
from herald.tracker.models import ReadPermission

UNMAILABLE = [
    "john..doe@example.org",
    ".lead@example.org",
    "lead.@example.org",
    "list..x@example.org",
    "root@localhost",
    "a" * 65 + "@example.org",
]


@pytest.mark.parametrize("address", UNMAILABLE)
def test_input_refuses_what_the_notifier_could_not_mail(address):
    assert not sanitize.is_safe_address(address)
    with pytest.raises(InvalidInput) as err:
        validate.email(address)
    assert err.value.field == "email"


def test_a_doubled_dot_is_named_in_the_error():
    with pytest.raises(InvalidInput, match="two dots in a row"):
        validate.email("john..doe@example.org")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.emails(), st.text(max_size=80), st.from_regex(r"[a-z.]{0,8}@[a-z.-]{0,12}")))
def test_one_grammar(address):
    try:
        validate.email(address)
        accepted = True
    except InvalidInput:
        accepted = False
    assert accepted == sanitize.is_safe_address(address)


def test_an_unmailable_address_already_stored_is_logged_with_the_reason(caplog):
    facts = ChangeFacts(
        author_id=1,
        is_creation=True,
        project_public=True,
        field_permissions={1: ReadPermission.ALL},
        changed_field_ids=frozenset({1}),
        lists=(GlobalList(addresses=frozenset({"list..x@example.org", "ok@example.org"})),),
    )
    with caplog.at_level(logging.WARNING, logger="herald.notify"):
        chosen = select_recipients(facts)
    assert [s.address for s in chosen] == ["ok@example.org"]
    (record,) = [r for r in caplog.records if "not mailed" in r.getMessage()]
    assert "list..x@example.org" in record.getMessage() and "two dots" in record.getMessage()


def test_unknown_keys_in_a_spec_get_a_hint():
    with pytest.raises(InvalidInput) as err:
        validate.mapping({"semantic": {}, "nme": "x"}, "tracker", {"name", "semantics"})
    assert "'nme' (did you mean 'name'?)" in err.value.message
    assert "'semantic' (did you mean 'semantics'?)" in err.value.message


def test_a_tracker_spec_reports_every_problem_at_once(sqlite_db, world):
    from herald.tracker.trackers import create_tracker

    spec = {
        "project_id": world.public.id,
        "name": "tasks",
        "fields": [
            {"name": "x", "type": "blob"},
            {"name": "ok", "type": "string"},
            {"name": "s", "type": "select"},
        ],
        "notifications": {"mode": "sometimes", "lists": [{"addresses": ["a..b@example.org"]}]},
    }
    with pytest.raises(InvalidInput) as err, sqlite_db.session() as s:
        create_tracker(s, spec)
    message = err.value.message
    assert message.startswith("4 problems: ")
    for fragment in ("fields[0].type", "fields[2].options", "notifications.mode", "lists[0].addresses[0]"):
        assert fragment in message, fragment
    assert err.value.field == "fields[0].type"
