"""`herald check` and `herald doctor` verdicts against real databases and queues."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from herald.config import DispatchMode, load_settings
from herald.ops.check import Status, run_check
from herald.ops.doctor import diagnose
from herald.ops.findings import CODES
from herald.outbox import Delivery, DeliveryStatus, Notification, NotificationState, records
from herald.queue import make_queue
from herald.tracker.artifacts import create_artifact
from herald.tracker.models import User, WorkerHeartbeat, utcnow
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
        n = s.get(Notification, cs.id)
        n.state = state
        if state is NotificationState.DEAD:
            n.finished_at = utcnow()
        return cs.id


def _delivery(db, changeset_id: int, address: str, status: DeliveryStatus, reply=None, sent_after=None):
    """A ledger row touched now; ``sent_after`` seconds after its notification's commit when sent."""
    with db.session() as s:
        created = s.get(Notification, changeset_id).created_at
        s.add(
            Delivery(
                changeset_id=changeset_id,
                address=address,
                reason="cc",
                status=status,
                attempts=1,
                last_reply=reply,
                updated_at=utcnow(),
                sent_at=created + timedelta(seconds=sent_after) if sent_after is not None else None,
            )
        )


def beat(db, name, kind="worker", *, info=None, silent_for=0.0, ttl=6.0, started_ago=600.0, pid=4242):
    """A heartbeat row as a process writes it; ``silent_for`` seconds since its last beat."""
    now = utcnow()
    at = now - timedelta(seconds=silent_for)
    with db.session() as s:
        s.merge(
            WorkerHeartbeat(
                name=name,
                kind=kind,
                pid=pid,
                host="box",
                started_at=now - timedelta(seconds=started_ago),
                beat_at=at,
                expires_at=at + timedelta(seconds=ttl),
                info=info if info is not None else {"state": "idle", "slots": 4, "busy": 0, "jobs": []},
            )
        )


def healthy_processes(db, workers: int = 2) -> None:
    beat(db, "box:supervisor", "supervisor", info={"workers_wanted": workers, "workers_alive": workers})
    for i in range(1, workers + 1):
        beat(db, f"box:worker-{i}")


def codes(report) -> dict[str, Status]:
    return {f.code: f.status for f in report.findings}


@pytest.fixture
def setup(tmp_path):
    settings = _settings(tmp_path, stale_after_seconds="60", async_emails="all")
    db = make_database(settings.database_url)
    world = build_world(db)
    queue = make_queue(settings)
    healthy_processes(db)
    yield settings, db, world, queue
    queue.close()
    db.dispose()


def test_ok_when_nothing_is_late(setup):
    settings, db, world, queue = setup
    _changeset(db, world, age_seconds=5)
    report = run_check(settings, db, queue)
    assert report.status is Status.OK, report.text_lines()
    assert report.summary().startswith("HERALD OK - notifications are flowing |")
    assert report.perfdata["unfinished"] == 1 and report.perfdata["stale"] == 0
    assert report.perfdata["workers_alive"] == 2 and report.perfdata["workers_expected"] == 2
    assert report.text_lines() == [report.summary()]


def test_warning_then_critical_as_notifications_age(setup):
    settings, db, world, queue = setup
    cs = _changeset(db, world, age_seconds=90, state=NotificationState.QUEUED)
    report = run_check(settings, db, queue)
    assert report.status is Status.WARNING
    assert codes(report) == {"backlog-stale": Status.WARNING}
    assert f"the oldest, changeset {cs}, is queued for 1 min 30 s" in report.summary()
    _changeset(db, world, age_seconds=601, state=NotificationState.RETRYING)
    report = run_check(settings, db, queue)
    assert report.status is Status.CRITICAL
    assert "is retrying for 10 min 1 s" in report.summary()


def test_the_oldest_not_the_newest_counts(setup):
    settings, db, world, queue = setup
    old = _changeset(db, world, age_seconds=3000, state=NotificationState.RUNNING)
    for _ in range(3):
        _changeset(db, world, age_seconds=1, state=NotificationState.QUEUED)
    report = run_check(settings, db, queue)
    assert f"changeset {old}, is running" in report.summary()


def test_every_finding_has_a_next_step_and_a_doc_anchor(setup):
    settings, db, world, queue = setup
    _changeset(db, world, age_seconds=900)
    report = run_check(settings, db, queue)
    assert report.findings
    for f in report.findings:
        assert f.next_step and f.doc == f"docs/operations.md#check-{f.code}"
    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    for code in CODES:
        assert f'<a id="check-{code}"></a>' in doc, code


def test_never_pushed_rows_are_reported(setup):
    settings, db, world, queue = setup
    _changeset(db, world, age_seconds=45)
    report = run_check(settings, db, queue)
    assert codes(report) == {"never-pushed": Status.WARNING}
    assert report.perfdata["never_pushed"] == 1


def test_finished_notifications_do_not_count(setup):
    settings, db, world, queue = setup
    _changeset(db, world, age_seconds=900, state=NotificationState.DONE)
    assert run_check(settings, db, queue).status is Status.OK


def test_dead_notifications_warn_and_growth_is_told(setup):
    settings, db, world, queue = setup
    _changeset(db, world, state=NotificationState.DEAD)
    report = run_check(settings, db, queue)
    assert codes(report) == {"dead-letters": Status.WARNING}
    assert "1 dead letter(s), 1 in the last 2 min" in report.summary()
    assert "herald queue dead" in report.findings[0].next_step


def test_async_without_workers_is_critical(tmp_path):
    settings = _settings(tmp_path, async_emails="all", nb_backend_workers="0")
    db = make_database(settings.database_url)
    queue = make_queue(settings)
    try:
        report = run_check(settings, db, queue)
    finally:
        queue.close()
        db.dispose()
    assert report.status is Status.CRITICAL
    assert "nb_backend_workers = 0" in report.summary()


def test_dead_workers_are_reported(setup):
    settings, db, _world, queue = setup
    beat(db, "box:worker-2", silent_for=20)
    report = run_check(settings, db, queue)
    assert codes(report) == {"workers-missing": Status.WARNING}
    assert "1 of 2 backend workers alive" in report.summary()
    beat(db, "box:worker-1", silent_for=20)
    report = run_check(settings, db, queue)
    assert codes(report) == {"no-worker": Status.CRITICAL}


def test_the_recovery_worker_is_shown_when_async_is_off(tmp_path):
    settings = _settings(tmp_path, stale_after_seconds="60")
    db = make_database(settings.database_url)
    world = build_world(db)
    queue = make_queue(settings)
    try:
        beat(db, "box:supervisor", "supervisor", info={"workers_wanted": 1})
        report = run_check(settings, db, queue)
        assert codes(report) == {"recovery-worker-down": Status.WARNING}
        _changeset(db, world, age_seconds=300, state=NotificationState.RETRYING)
        assert codes(run_check(settings, db, queue))["recovery-worker-down"] is Status.CRITICAL
        beat(db, "box:worker-1")
        report = run_check(settings, db, queue)
        assert "recovery-worker-down" not in codes(report)
        assert report.perfdata["workers_alive"] == 1 and report.facts["worker_role"] == "recovery"
    finally:
        queue.close()
        db.dispose()


def test_a_worker_that_stopped_beating_with_a_job_is_stuck(setup):
    settings, db, _world, queue = setup
    since = utcnow().timestamp() - 40
    info = {"state": "busy", "jobs": [{"job_id": "j1", "changeset_id": 77, "since": since}]}
    beat(db, "box:worker-2", info=info, silent_for=30, pid=999)
    report = run_check(settings, db, queue)
    assert codes(report) == {"workers-missing": Status.WARNING, "worker-stuck": Status.WARNING}
    stuck = next(f for f in report.findings if f.code == "worker-stuck")
    assert "box:worker-2 (pid 999) stopped beating 30 s ago while holding changeset 77" in stuck.message
    assert "kill -CONT 999" in stuck.next_step


def test_a_live_worker_on_one_job_for_too_long_is_stuck(setup):
    settings, db, _world, queue = setup
    info = {
        "state": "busy",
        "jobs": [{"job_id": "j1", "changeset_id": 5, "since": utcnow().timestamp() - 400}],
    }
    beat(db, "box:worker-1", info=info)
    report = run_check(settings, db, queue)
    assert codes(report) == {"worker-stuck": Status.WARNING}
    assert "has held changeset 5 for 6 min 40 s" in report.summary()


def test_garbage_heartbeat_info_is_tolerated(setup):
    settings, db, _world, queue = setup
    beat(
        db, "box:worker-1", info={"jobs": [None, {"since": "x"}, {"since": 1e300}, {"since": -5}], "relay": 3}
    )
    beat(db, "box:worker-2", info={"jobs": "nope", "relay": {"up": "maybe"}})
    assert run_check(settings, db, queue).status is Status.OK


def test_smtp_relay_down_in_every_worker_is_critical(setup):
    settings, db, _world, queue = setup
    relay = {"up": False, "since": utcnow().timestamp() - 75, "last_error": "cannot reach SMTP server"}
    beat(db, "box:worker-1", info={"state": "relay_down", "relay": relay})
    report = run_check(settings, db, queue)
    assert codes(report) == {"smtp-relay-down": Status.WARNING}
    beat(db, "box:worker-2", info={"state": "relay_down", "relay": relay})
    report = run_check(settings, db, queue)
    assert codes(report) == {"smtp-relay-down": Status.CRITICAL}
    assert "unusable for 2 of 2 worker(s), for 1 min 15 s: cannot reach SMTP server" in report.summary()


def test_a_high_share_of_4xx_is_reported(setup):
    settings, db, world, queue = setup
    cs = _changeset(db, world, age_seconds=10, state=NotificationState.RETRYING)
    for who in ("bob", "carol"):
        _delivery(db, cs, f"{who}@example.org", DeliveryStatus.RETRYING, reply="451 4.3.0 try later")
    assert "smtp-4xx" not in codes(run_check(settings, db, queue))  # two answers are not a trend
    _delivery(db, cs, "dave@example.org", DeliveryStatus.RETRYING, reply="451 4.3.0 try later")
    report = run_check(settings, db, queue)
    assert codes(report)["smtp-4xx"] is Status.CRITICAL
    assert "3 of the last 3 recipient(s)" in report.summary() and "451 4.3.0 try later" in report.summary()
    done = _changeset(db, world, age_seconds=10, state=NotificationState.DONE)
    for i in range(6):
        _delivery(db, done, f"u{i}@example.org", DeliveryStatus.SENT, sent_after=1)
    assert codes(run_check(settings, db, queue))["smtp-4xx"] is Status.WARNING  # 3 of 9


def test_late_mail_is_reported(setup):
    settings, db, world, queue = setup
    cs = _changeset(db, world, age_seconds=200, state=NotificationState.DONE)
    _delivery(db, cs, "bob@example.org", DeliveryStatus.SENT, sent_after=150)
    _delivery(db, cs, "carol@example.org", DeliveryStatus.SENT, sent_after=2)
    report = run_check(settings, db, queue)
    assert codes(report) == {"mail-late": Status.WARNING}
    assert (
        f"1 of the last 2 mail(s) sent in the last 2 min went out more than 60 s after their change "
        f"(worst: changeset {cs}, 2 min 30 s)" in report.summary()
    )


def test_no_outbox_relay_is_reported(setup):
    settings, db, world, queue = setup
    beat(db, "box:supervisor", "supervisor", info={"workers_wanted": 2}, silent_for=30)
    report = run_check(settings, db, queue)
    assert codes(report) == {"outbox-relay-down": Status.WARNING}
    assert "the supervisor on box stopped beating 30 s ago" in report.summary()
    _changeset(db, world, age_seconds=40)
    assert codes(run_check(settings, db, queue))["outbox-relay-down"] is Status.CRITICAL


def test_a_supervisor_whose_loop_is_stuck_is_reported(setup):
    settings, db, _world, queue = setup
    info = {"workers_wanted": 2, "loop_at": utcnow().timestamp() - 90}
    beat(db, "box:supervisor", "supervisor", info=info, pid=77)
    report = run_check(settings, db, queue)
    assert codes(report) == {"outbox-relay-down": Status.WARNING}
    assert "(pid 77) beats but its loop has not turned for 1 min 30 s" in report.summary()


def test_a_recent_supervisor_restart_is_reported(setup):
    settings, db, _world, queue = setup
    beat(db, "box:supervisor", "supervisor", info={"workers_wanted": 2, "up_restarts": 1}, started_ago=5)
    report = run_check(settings, db, queue)
    assert codes(report) == {"supervisor-restarted": Status.WARNING}
    beat(db, "box:supervisor", "supervisor", info={"workers_wanted": 2, "up_restarts": 1}, started_ago=900)
    assert run_check(settings, db, queue).status is Status.OK


def test_garbage_ages_are_never_shown(setup):
    """A queue whose live set holds a garbage enqueue time reports no age rather than decades."""
    settings, db, _world, queue = setup
    report = run_check(settings, db, queue)
    assert 0 <= report.perfdata["queue_oldest_age_s"] < 3600


def test_json_document(setup):
    settings, db, world, queue = setup
    _changeset(db, world, age_seconds=900)
    doc = run_check(settings, db, queue).as_dict()
    assert doc["status"] == "CRITICAL" and doc["code"] == 2
    assert doc["summary"] and "|" not in doc["summary"]
    assert {"status", "code", "message", "next_step", "doc"} <= set(doc["findings"][0])
    assert doc["facts"]["workers"][0]["name"] == "box:worker-1"


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
    assert set(codes(report)) == {"database-unreadable", "queue-unreachable"}
    db_finding = next(f for f in report.findings if f.code == "database-unreadable")
    assert db_finding.message.startswith("the tracker database cannot be read: OperationalError: ")
    assert "\n" not in db_finding.message


def test_a_database_without_the_schema_is_one_clear_line(tmp_path):
    settings = _settings(tmp_path, database_url=f"sqlite:///{tmp_path}/nowhere/herald.db")
    from herald.tracker.db import Database

    db = Database(settings.database_url)
    try:
        report = run_check(settings, db, None)
    finally:
        db.dispose()
    assert codes(report) == {"database-unreadable": Status.CRITICAL}
    assert "has no herald schema (OperationalError: no such table: notifications)" in report.summary()
    assert "herald db upgrade" in report.findings[0].next_step


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
