"""``node_name``: each host's name in a deployment (heartbeats, queue consumers, lock holders)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from herald.config import ConfigError, load_settings
from herald.worker.heartbeat import process_name


def _settings(tmp_path: Path, **env: str):  # type: ignore[no-untyped-def]
    return load_settings(env={"HERALD_DATA_DIR": str(tmp_path), **env})


def test_defaults_to_the_hostname(tmp_path: Path) -> None:
    name = _settings(tmp_path).node_name
    assert name and ":" not in name
    assert name == socket.gethostname()[:48] or not socket.gethostname().isidentifier()


@pytest.mark.parametrize("bad", ["a:b", "", "-lead", "x" * 49, "host name", "é"])
def test_refuses_what_cannot_prefix_a_name(tmp_path: Path, bad: str) -> None:
    if bad == "":
        assert _settings(tmp_path, HERALD_NODE_NAME=bad).node_name  # empty: the default
        return
    with pytest.raises(ConfigError, match="node_name"):
        _settings(tmp_path, HERALD_NODE_NAME=bad)


def test_two_containers_with_one_hostname_get_two_names(tmp_path: Path) -> None:
    a = _settings(tmp_path, HERALD_NODE_NAME="web-1.pod").node_name
    b = _settings(tmp_path, HERALD_NODE_NAME="web-2.pod").node_name
    assert process_name("worker-1", a) != process_name("worker-1", b)
    assert process_name("worker-1", a) == "web-1.pod:worker-1"


def test_a_second_host_under_the_same_name_is_warned_about(tmp_path: Path, sqlite_db, capture_log) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from herald.tracker.models import WorkerHeartbeat, utcnow
    from herald.worker import Supervisor

    url = sqlite_db.engine.url.render_as_string(hide_password=False)
    settings = _settings(tmp_path, HERALD_DATABASE_URL=url, HERALD_NODE_NAME="box")
    with sqlite_db.session() as s:
        now = utcnow()
        s.add(
            WorkerHeartbeat(
                name="box:relay",
                kind="supervisor",
                pid=1,
                host="box",
                started_at=now,
                beat_at=now,
                expires_at=now + timedelta(seconds=6),
                info={},
            )
        )
    records = capture_log("herald.supervisor")
    supervisor = Supervisor(settings, ["herald"], spawn=False, db=sqlite_db)
    supervisor._warn_if_name_taken()
    supervisor.queue.close()
    assert any("give each host its own node_name" in m for m in records.messages())
