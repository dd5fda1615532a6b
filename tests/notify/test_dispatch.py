"""The dispatch policy reads ``async_emails``."""

from __future__ import annotations

import pytest

from herald.config import DispatchMode, load_settings
from herald.notify import DispatchPolicy


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
