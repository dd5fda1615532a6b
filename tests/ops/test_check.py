"""`herald check` and `herald doctor` verdicts against real databases and queues."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from herald.config import DispatchMode, load_settings
from herald.ops.check import Status, run_check
from herald.ops.doctor import diagnose
from herald.outbox import Notification, NotificationState, records
from herald.queue import make_queue
from herald.tracker.artifacts import create_artifact
from herald.tracker.models import User, utcnow
from tests.support.services import free_port
from tests.support.tracker import build_world, make_database


def _settings(tmp_path: Path, **env: str):
    return load_settings(
        env={"HERALD_DATA_DIR": str(tmp_path), **{f"HERALD_{k.upper()}": v for k, v in env.items()}}
    )


def _changeset(db, world, age_seconds: float = 0, state=NotificationState.PENDING) -> int:
    with db.session() as s:
        cs = create_artifact(
            s, tracker_id=world.bugs.id, author=s.get(User, world.users["alice"].id), values={"title": "t"}
        )
        records.record(s, cs.id, DispatchMode.ASYNC, utcnow() - timedelta(seconds=age_seconds))
        s.flush()
        s.get(Notification, cs.id).state = state
        return cs.id


@pytest.fixture
def setup(tmp_path):
    settings = _settings(tmp_path, stale_after_seconds="60")
    db = make_database(settings.database_url)
    world = build_world(db)
    queue = make_queue(settings)
    yield settings, db, world, queue
    queue.close()
    db.dispose()


def test_ok_when_nothing_is_late(setup):
    settings, db, world, queue = setup
    _changeset(db, world, age_seconds=5)
    report = run_check(settings, db, queue)
    assert report.status is Status.OK
    assert report.summary().startswith("HERALD OK - notifications are flowing |")
    assert report.perfdata["unfinished"] == 1 and report.perfdata["stale"] == 0


def test_warning_then_critical_as_notifications_age(setup):
    settings, db, world, queue = setup
    cs = _changeset(db, world, age_seconds=90)
    report = run_check(settings, db, queue)
    assert report.status is Status.WARNING
    assert f"1 notification(s) pending for more than 60 s (oldest: changeset {cs}" in report.summary()
    _changeset(db, world, age_seconds=601)
    assert run_check(settings, db, queue).status is Status.CRITICAL


def test_finished_notifications_do_not_count(setup):
    settings, db, world, queue = setup
    _changeset(db, world, age_seconds=900, state=NotificationState.DONE)
    assert run_check(settings, db, queue).status is Status.OK


def test_dead_notifications_warn(setup):
    settings, db, world, queue = setup
    _changeset(db, world, state=NotificationState.DEAD)
    report = run_check(settings, db, queue)
    assert report.status is Status.WARNING and "dead-lettered" in report.summary()


def test_async_without_workers_is_critical(tmp_path):
    settings = _settings(tmp_path, async_emails="all", nb_backend_workers="0")
    db = make_database(settings.database_url)
    queue = make_queue(settings)
    try:
        report = run_check(settings, db, queue, live_workers=lambda: 0)
    finally:
        queue.close()
        db.dispose()
    assert report.status is Status.CRITICAL
    assert "nb_backend_workers = 0" in report.summary()


def test_dead_workers_are_reported(tmp_path):
    settings = _settings(tmp_path, async_emails="all", nb_backend_workers="2")
    db = make_database(settings.database_url)
    queue = make_queue(settings)
    try:
        assert run_check(settings, db, queue, live_workers=lambda: 1).status is Status.WARNING
        assert run_check(settings, db, queue, live_workers=lambda: 0).status is Status.CRITICAL
        assert run_check(settings, db, queue, live_workers=lambda: 2).status is Status.OK
    finally:
        queue.close()
        db.dispose()


def test_unreachable_parts_are_critical_not_crashes(tmp_path):
    port = free_port()
    settings = _settings(
        tmp_path,
        redis_server="127.0.0.1",
        redis_port=str(port),
        database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/x",
    )
    from herald.tracker.db import Database

    db = Database(settings.database_url)
    queue = make_queue(settings)
    try:
        report = run_check(settings, db, queue)
    finally:
        queue.close()
        db.dispose()
    assert report.status is Status.CRITICAL
    messages = " ".join(m for _, m in report.findings)
    assert "database cannot be read" in messages and "queue cannot be reached" in messages


def test_doctor_flags_an_unhardened_redis(tmp_path):
    """The machine's own Redis (127.0.0.1:6379) has no password and no persistence: doctor must say so."""
    import socket

    from tests.support.services import service_missing

    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 6379)) != 0:
            service_missing("no Redis at 127.0.0.1:6379")
    settings = _settings(tmp_path, redis_server="127.0.0.1", redis_namespace=f"doctor-{tmp_path.name}")
    make_database(settings.database_url).dispose()
    report = diagnose(settings)
    joined = " ".join(report.warnings)
    assert "without a password" in joined and "appendonly is off" in joined
    assert report.exit_code == 1
    assert not report.errors


def test_doctor_on_embedded_defaults_is_clean(tmp_path):
    settings = _settings(tmp_path)
    make_database(settings.database_url).dispose()
    # What secure_data_dir (called by the CLI at start) leaves; doctor warns about anything wider.
    os.chmod(tmp_path, 0o700)
    os.chmod(settings.sqlite_path, 0o600)
    report = diagnose(settings)
    assert report.exit_code == 0, report
    assert any("built-in mailbox" in line for line in report.ok)


def test_doctor_reports_unreachable_smtp(tmp_path):
    settings = _settings(tmp_path, smtp_host="127.0.0.1", smtp_port=str(free_port()), smtp_timeout="2")
    make_database(settings.database_url).dispose()
    report = diagnose(settings)
    assert report.exit_code == 2 and any("SMTP 127.0.0.1" in e for e in report.errors)
