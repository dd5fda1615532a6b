"""``GET /api/check`` (admin) and ``GET /healthz`` (anyone) read the same heartbeats as ``herald check``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from herald.config import Settings, ensure_secrets, load_settings
from herald.tracker.db import Database
from herald.tracker.schema import upgrade
from herald.web import create_app
from tests.ops.test_check import beat, healthy_processes
from tests.web.conftest import RecordingDispatcher


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, Settings, Database]]:
    settings = ensure_secrets(
        load_settings(
            env={
                "HERALD_DATA_DIR": str(tmp_path),
                "HERALD_ASYNC_EMAILS": "all",
                "HERALD_NB_BACKEND_WORKERS": "2",
            }
        )
    )
    db = Database(settings.database_url)
    upgrade(db.engine)
    dispatcher = RecordingDispatcher()
    with TestClient(create_app(settings, dispatcher_factory=lambda _s, _db: dispatcher)) as client:
        yield client, settings, db
    db.dispose()


def test_api_check_needs_the_admin_token_and_returns_the_report(app):
    client, settings, db = app
    assert client.get("/api/check").status_code == 401
    assert client.get("/api/check", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = client.get("/api/check", headers={"Authorization": f"Bearer {settings.admin_token}"})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "CRITICAL" and body["code"] == 2
    assert body["findings"][0]["code"] == "no-worker"
    assert body["findings"][0]["doc"] == "docs/operations.md#check-no-worker"
    healthy_processes(db)
    body = client.get("/api/check", headers={"Authorization": f"Bearer {settings.admin_token}"}).json()
    assert body["status"] == "OK" and body["findings"] == []
    assert body["summary"] == "notifications are flowing"


def test_healthz_is_degraded_while_workers_or_relays_are_down(app):
    client, _settings, db = app
    r = client.get("/healthz")
    assert r.status_code == 503
    assert r.json()["missing"] == ["workers", "outbox-relay"]
    healthy_processes(db)
    r = client.get("/healthz")
    assert r.status_code == 200
    workers = {"alive": 2, "expected": 2}
    assert r.json() == {"status": "ok", "database": "ok", "missing": [], "workers": workers}
    beat(db, "box:worker-2", silent_for=30)
    assert client.get("/healthz").json()["missing"] == ["workers"]
    relay = {"up": False, "since": 1.7e9, "last_error": "535 5.7.8 bad credentials for secret-user"}
    beat(db, "box:worker-1", info={"state": "relay_down", "relay": relay})
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["missing"] == ["workers", "smtp-relay"]
    assert "secret" not in r.text and "box" not in r.text and "4242" not in r.text


def test_healthz_without_a_database_is_an_error_not_a_crash(tmp_path: Path):
    settings = ensure_secrets(load_settings(env={"HERALD_DATA_DIR": str(tmp_path)}))
    dispatcher = RecordingDispatcher()
    with TestClient(create_app(settings, dispatcher_factory=lambda _s, _db: dispatcher)) as client:
        r = client.get("/healthz")  # the schema was never created
    assert r.status_code == 503 and r.json()["status"] == "error"
