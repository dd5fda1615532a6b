"""What the supervisor says at start about the Redis it was given."""

from __future__ import annotations

import socket
from pathlib import Path

from herald.config import load_settings
from herald.worker.supervisor import Supervisor
from tests.support.redis_server import RedisServer
from tests.support.services import service_missing
from tests.support.tracker import make_database


def _supervisor(tmp_path: Path, **env: str) -> Supervisor:
    settings = load_settings(env={"HERALD_DATA_DIR": str(tmp_path), **env})
    db = make_database(settings.database_url)
    return Supervisor(settings, ["true"], spawn=False, db=db)


def test_an_unhardened_redis_is_reported_at_start(tmp_path, capture_log):
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 6379)) != 0:
            service_missing("no Redis at 127.0.0.1:6379")
    log = capture_log("herald.supervisor")
    sup = _supervisor(tmp_path, HERALD_REDIS_SERVER="127.0.0.1", HERALD_REDIS_NAMESPACE="sup-start")
    try:
        sup._warn_about_redis()
    finally:
        sup.queue.close()
        sup.db.dispose()
    text = " ".join(log.messages())
    assert "without a password" in text and "appendonly is off" in text


def test_a_hardened_redis_gets_no_warning(tmp_path, capture_log, redis_server: RedisServer):
    log = capture_log("herald.supervisor")
    sup = _supervisor(tmp_path, HERALD_REDIS_URL=redis_server.url, HERALD_REDIS_NAMESPACE="sup-start")
    try:
        sup._warn_about_redis()
    finally:
        sup.queue.close()
        sup.db.dispose()
    assert not [m for m in log.messages() if m.startswith("redis:")]
