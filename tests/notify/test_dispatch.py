"""The dispatch policy reads ``async_emails``."""

from __future__ import annotations

import pytest

from herald.config import load_settings
from herald.notify import DispatchPolicy
from herald.tracker.models import DispatchMode


@pytest.mark.parametrize(
    ("value", "project", "mode"),
    [
        ("false", 1, DispatchMode.INLINE),
        ("all", 1, DispatchMode.ASYNC),
        ("101,102", 101, DispatchMode.ASYNC),
        ("101,102", 103, DispatchMode.INLINE),
    ],
)
def test_mode_for(tmp_path, value, project, mode):
    settings = load_settings(env={"HERALD_ASYNC_EMAILS": value, "HERALD_DATA_DIR": str(tmp_path)})
    policy = DispatchPolicy(settings)
    assert policy.mode_for(project) is mode
    assert policy(project) is mode  # usable directly as the services' ``mode_for``


def test_services_record_the_policy_mode(world, tmp_path):
    from herald.tracker.artifacts import create_artifact
    from herald.tracker.models import Notification, User

    s = world.scene
    policy = DispatchPolicy(
        load_settings(env={"HERALD_ASYNC_EMAILS": str(world.demo), "HERALD_DATA_DIR": str(tmp_path)})
    )
    with s.db.session() as session:
        alice = session.get(User, s.users["alice"])
        public = create_artifact(
            session, tracker_id=world.bugs, author=alice, values={"title": "a"}, mode_for=policy.mode_for
        )
        private = create_artifact(
            session, tracker_id=world.secret_bugs, author=alice, values={"title": "b"}, mode_for=policy
        )
        assert session.get(Notification, public.id).mode is DispatchMode.ASYNC
        assert session.get(Notification, private.id).mode is DispatchMode.INLINE
