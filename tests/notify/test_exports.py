"""The public surface of ``herald.notify`` and the parts it may import (DESIGN.md: tracker, config)."""

from __future__ import annotations

from pathlib import Path

import herald.notify

NOTIFY = Path(herald.notify.__file__).parent


def test_public_names():
    assert sorted(herald.notify.__all__) == [
        "DispatchPolicy",
        "NotificationPlan",
        "Outgoing",
        "PreparedChange",
        "Reason",
        "Recipient",
        "Wire",
        "compute_recipients",
        "plan_notification",
        "prepare_change",
        "unsubscribe_token",
        "verify_unsubscribe_token",
    ]
    for name in herald.notify.__all__:
        assert getattr(herald.notify, name).__doc__, f"{name} needs a docstring"


def test_templates_are_packaged():
    assert {p.name for p in (NOTIFY / "templates").iterdir()} >= {"mail.txt.j2", "mail.html.j2"}
