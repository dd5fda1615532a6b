"""One delivery run, against aiosmtpd and a real database: the fenced per-changeset lock, the ledger (a retry
sends only what is still owed), per-recipient outcomes, the relay-down hold, and the log lines."""

from __future__ import annotations

import dataclasses
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import update

from herald.config import DispatchMode
from herald.delivery import Deliverer, RelayGate, Verdict
from herald.mail import make_pool
from herald.mail.transport import Receipt
from herald.outbox import DeliveryStatus, Notification, NotificationState, lock
from herald.outbox.ledger import DROPPED
from herald.tracker import subscriptions
from herald.tracker.models import Changeset, utcnow
from tests.support.beds import RECIPIENTS, Bed, deliveries, message_ids, notification
from tests.support.services import free_port
from tests.support.waiting import wait_until

START = re.compile(
    r"^Notification: Start notification changeset_id=\d+ artifact_id=\d+ recipients=\d+ mode=(inline|async)$"
)
END = re.compile(
    r"^Notification: End notification changeset_id=\d+ artifact_id=\d+ recipients=\d+ sent=\d+ failed=\d+ "
    r"retrying=\d+ duration_ms=\d+\.\d$"
)


def deliverer(bed: Bed, relay=None, settings=None, **kwargs) -> Deliverer:
    settings = settings or bed.settings
    return Deliverer(bed.db, settings, relay or make_pool(settings, max_connections=4), **kwargs)


def run(d: Deliverer, changeset_id: int, holder: str = "test", **kwargs):
    return d.deliver(changeset_id, holder=holder, mode=DispatchMode.ASYNC, **kwargs)


def later(seconds: float):
    return lambda: utcnow() + timedelta(seconds=seconds)


def test_every_recipient_gets_one_mail_and_the_ledger_says_so(any_bed: Bed, capture_log):
    log = capture_log("herald.notification")
    cs = any_bed.changeset()
    outcome = run(deliverer(any_bed), cs)
    assert (outcome.verdict, outcome.recipients, outcome.sent, outcome.failed, outcome.retrying) == (
        Verdict.DONE,
        3,
        3,
        0,
        0,
    )
    assert sorted(m.rcpt_tos[0] for m in any_bed.server.messages) == list(RECIPIENTS)
    ledger = deliveries(any_bed.db, cs)
    assert {a: d.status for a, d in ledger.items()} == dict.fromkeys(RECIPIENTS, DeliveryStatus.SENT)
    assert sorted(d.message_id for d in ledger.values()) == sorted(message_ids(any_bed.server))
    assert all(d.attempts == 1 and d.last_reply.startswith("250") for d in ledger.values())
    n = notification(any_bed.db, cs)
    assert n.state is NotificationState.DONE and n.attempts == 1
    assert n.started_at and n.finished_at and n.worker is None and n.lease_until is None
    lines = log.messages()
    assert START.match(lines[0]) and lines[0].endswith("recipients=3 mode=async"), lines
    assert END.match(lines[-1]) and "sent=3 failed=0 retrying=0" in lines[-1], lines


def test_a_second_run_of_a_done_notification_sends_nothing(bed: Bed):
    cs = bed.changeset()
    d = deliverer(bed)
    run(d, cs)
    assert run(d, cs, holder="again").verdict is Verdict.DONE
    assert len(bed.server.messages) == 3


def test_451_then_250_is_one_delivery_and_the_retry_sends_only_that_recipient(any_bed: Bed):
    any_bed.server.script_data("451 4.3.0 try again later")
    cs = any_bed.changeset()
    d = deliverer(any_bed)
    first = run(d, cs)
    assert (first.verdict, first.sent, first.retrying) == (Verdict.RETRY, 2, 1)
    assert 0 <= first.delay <= any_bed.settings.retry_max_seconds
    ledger = deliveries(any_bed.db, cs)
    (waiting,) = [d for d in ledger.values() if d.status is DeliveryStatus.RETRYING]
    assert waiting.last_reply == "451 4.3.0 try again later" and waiting.attempts == 1
    assert waiting.next_attempt_at is not None
    n = notification(any_bed.db, cs)
    assert n.state is NotificationState.RETRYING and n.next_attempt_at is not None
    assert "451 4.3.0 try again later" in n.last_error

    second = run(deliverer(any_bed, clock=later(1)), cs, holder="second")
    assert (second.verdict, second.sent, second.retrying) == (Verdict.DONE, 3, 0)
    ids = message_ids(any_bed.server)
    assert len(ids) == len(set(ids)) == 3  # one delivery each, the retried one included
    assert any_bed.server.messages[-1].rcpt_tos == (waiting.address,)
    assert deliveries(any_bed.db, cs)[waiting.address].attempts == 2


def test_550_for_one_recipient_fails_it_for_good_and_the_others_are_delivered(any_bed: Bed, capture_log):
    log = capture_log("herald.notification")
    any_bed.server.refuse_recipient("carol@example.org")
    cs = any_bed.changeset()
    outcome = run(deliverer(any_bed), cs)
    assert (outcome.verdict, outcome.sent, outcome.failed, outcome.retrying) == (Verdict.DONE, 2, 1, 0)
    assert sorted(m.rcpt_tos[0] for m in any_bed.server.messages) == ["bob@example.org", "dave@example.org"]
    carol = deliveries(any_bed.db, cs)["carol@example.org"]
    assert carol.status is DeliveryStatus.FAILED
    assert carol.last_reply == "550 5.1.1 <carol@example.org>: no such user"
    assert notification(any_bed.db, cs).state is NotificationState.DONE
    failure = [m for m in log.messages() if "delivery failed" in m]
    assert failure == [
        f"Notification: delivery failed changeset_id={cs} recipient=carol@example.org "
        "reply='550 5.1.1 <carol@example.org>: no such user'; permanent failure"
    ]


def test_a_recipient_failing_past_delivery_max_age_fails_with_the_last_reply(make_bed, sqlite_db):
    bed = make_bed(sqlite_db, delivery_max_age=60)
    bed.server.refuse_recipient("bob@example.org", "450 4.2.1 mailbox busy")
    cs = bed.changeset()
    assert run(deliverer(bed), cs).verdict is Verdict.RETRY
    assert run(deliverer(bed, clock=later(30)), cs, holder="2").verdict is Verdict.RETRY
    final = run(deliverer(bed, clock=later(61)), cs, holder="3")
    assert (final.verdict, final.sent, final.failed) == (Verdict.DONE, 2, 1)
    bob = deliveries(bed.db, cs)["bob@example.org"]
    assert bob.status is DeliveryStatus.FAILED and bob.attempts == 3
    assert bob.last_reply == "gave up after 1m1s of failures: 450 4.2.1 mailbox busy"


def test_an_unreachable_relay_charges_nobody_and_leaves_everyone_due_soon(bed: Bed):
    nobody = dataclasses.replace(bed.settings, smtp_port=free_port())
    cs = bed.changeset()
    outcome = run(deliverer(bed, settings=nobody), cs)
    assert (outcome.verdict, outcome.sent, outcome.retrying, outcome.held) == (Verdict.RETRY, 0, 3, 3)
    assert 0 < outcome.delay <= 5
    ledger = deliveries(bed.db, cs).values()
    assert [d.attempts for d in ledger] == [0, 0, 0]
    assert all(d.status is DeliveryStatus.PENDING and d.first_failed_at is None for d in ledger)
    n = notification(bed.db, cs)
    assert n.state is NotificationState.RETRYING and "cannot reach SMTP server" in n.last_error


def test_with_a_relay_gate_a_run_holds_through_an_outage_and_finishes_when_the_relay_is_back(bed: Bed):
    cs = bed.changeset()
    pool = make_pool(bed.settings, max_connections=2)
    gate = RelayGate(pool.probe)
    bed.server.go_down()
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("o", run(deliverer(bed, pool, gate=gate), cs)))
    worker.start()
    wait_until(lambda: not gate.is_open, "the gate to close")
    assert worker.is_alive() and bed.server.messages == []
    assert all(d.attempts == 0 for d in deliveries(bed.db, cs).values())
    bed.server.come_back()
    worker.join(timeout=15)
    assert not worker.is_alive() and gate.is_open
    assert result["o"].verdict is Verdict.DONE and result["o"].sent == 3
    assert sorted(m.rcpt_tos[0] for m in bed.server.messages) == list(RECIPIENTS)
    assert all(d.attempts == 1 for d in deliveries(bed.db, cs).values())
    gate.stop()


def test_the_lock_keeps_a_second_holder_out_until_the_lease_runs_out(bed: Bed):
    cs = bed.changeset()
    with bed.db.engine.begin() as conn:
        held = lock.acquire(conn, cs, "crashed-worker", 5, now=utcnow())
    assert held.status is lock.LockStatus.ACQUIRED and held.lease.fence == 1
    busy = run(deliverer(bed), cs)
    assert busy.verdict is Verdict.BUSY and 5.0 < busy.delay <= 6.0
    assert bed.server.messages == []
    assert run(deliverer(bed, clock=later(6)), cs, holder="successor").verdict is Verdict.DONE
    assert len(bed.server.messages) == 3
    assert notification(bed.db, cs).attempts == 2


def test_a_changeset_that_no_longer_exists_is_finished_with_a_log_line(bed: Bed, capture_log):
    log = capture_log("herald.notification")
    cs = bed.changeset()
    with bed.db.session() as s:
        s.delete(s.get(Changeset, cs))
    outcome = run(deliverer(bed), cs)
    assert outcome.verdict is Verdict.GONE and outcome.finished
    assert log.messages() == [f"Notification: changeset_id={cs} no longer exists; nothing to send"]


class StealAfterFirst:
    """Sends for real, then lets another holder take the lock over (its fence rises), as if our lease ran
    out while we were frozen."""

    def __init__(self, inner, bed: Bed, changeset_id: int) -> None:
        self.inner, self.bed, self.cs, self.sent = inner, bed, changeset_id, 0

    def send_bytes(self, raw, sender, recipient, *, message_id=None, utf8=False) -> Receipt:
        receipt = self.inner.send_bytes(raw, sender, recipient, message_id=message_id)
        self.sent += 1
        if self.sent == 1:
            with self.bed.db.engine.begin() as conn:
                conn.execute(
                    update(Notification.__table__)
                    .where(Notification.changeset_id == self.cs)
                    .values(fence=Notification.fence + 1, worker="thief")
                )
        return receipt

    def probe(self) -> None:
        self.inner.probe()


def test_a_fenced_off_holder_records_nothing_and_nobody_is_mailed_twice(make_bed, sqlite_db):
    bed = make_bed(sqlite_db)
    cs = bed.changeset()
    thief = StealAfterFirst(make_pool(bed.settings, max_connections=1), bed, cs)
    outcome = run(deliverer(bed, thief, batch=1), cs)
    assert outcome.verdict is Verdict.LOST and outcome.finished
    assert thief.sent == 1
    # Nothing of the fenced-off holder was written: its one send is "in flight" for the ledger.
    assert all(d.status is DeliveryStatus.PENDING for d in deliveries(bed.db, cs).values())
    # The thief "crashed" too; its lease ends and a third run completes: the in-flight mail is the only
    # one sent twice.
    with bed.db.engine.begin() as conn:
        conn.execute(
            update(Notification.__table__).where(Notification.changeset_id == cs).values(lease_until=utcnow())
        )
    assert run(deliverer(bed), cs, holder="third").verdict is Verdict.DONE
    ids = message_ids(bed.server)
    assert len(ids) == 4 and len(set(ids)) == 3


def test_shutdown_past_grace_stops_between_recipients_and_leaves_the_rest_due_now(bed: Bed):
    cs = bed.changeset()
    answers = iter([True, True])  # the batch may start, its one send may go; then stop
    outcome = run(deliverer(bed, batch=1), cs, keep_going=lambda: next(answers, False))
    assert (outcome.verdict, outcome.sent, outcome.retrying, outcome.delay) == (Verdict.RETRY, 1, 2, 0.0)
    n = notification(bed.db, cs)
    assert n.state is NotificationState.RETRYING and n.last_error == "interrupted by shutdown"
    assert run(deliverer(bed), cs, holder="next").verdict is Verdict.DONE
    ids = message_ids(bed.server)
    assert len(ids) == len(set(ids)) == 3


def test_a_recipient_dropped_between_rounds_is_closed_with_why(bed: Bed):
    bed.server.refuse_recipient("carol@example.org", "451 4.7.1 greylisted")
    cs = bed.changeset()
    assert run(deliverer(bed), cs).verdict is Verdict.RETRY
    with bed.db.session() as s:
        artifact_id = s.get(Changeset, cs).artifact_id
        subscriptions.unsubscribe(s, artifact_id, s.merge(bed.world.users["carol"], load=False))
    outcome = run(deliverer(bed, clock=later(1)), cs, holder="2")
    assert (outcome.verdict, outcome.recipients, outcome.sent) == (Verdict.DONE, 2, 2)
    carol = deliveries(bed.db, cs)["carol@example.org"]
    assert carol.status is DeliveryStatus.FAILED and carol.last_reply == DROPPED


class Broken:
    def send_bytes(self, raw, sender, recipient, *, message_id=None, utf8=False) -> Receipt:
        raise RuntimeError("bug in a transport")

    def probe(self) -> None:
        pass


def test_an_unexpected_transport_error_is_retried_not_lost(bed: Bed):
    cs = bed.changeset()
    outcome = run(deliverer(bed, Broken()), cs)
    assert (outcome.verdict, outcome.retrying) == (Verdict.RETRY, 3)
    assert run(deliverer(bed, clock=later(1)), cs, holder="fixed").verdict is Verdict.DONE


def test_deliverer_needs_the_secret_key(bed: Bed):
    with pytest.raises(ValueError, match="secret_key"):
        Deliverer(bed.db, dataclasses.replace(bed.settings, secret_key=None), Broken())


def test_the_recipients_of_one_change_are_sent_in_parallel_over_pooled_connections(make_bed, sqlite_db):
    bed = make_bed(sqlite_db)
    cs = bed.changeset()
    pool = make_pool(bed.settings, max_connections=3)
    with ThreadPoolExecutor(3) as senders:
        outcome = run(deliverer(bed, pool, senders=senders), cs)
        assert outcome.verdict is Verdict.DONE and outcome.sent == 3
        second = bed.changeset()
        assert run(deliverer(bed, pool, senders=senders), second).sent == 3
    assert len(bed.server.messages) == 6
    assert bed.server.connections <= 3  # the pool's connections served both changes
    pool.close()


def test_a_delayed_mail_says_how_long_it_waited(make_bed, sqlite_db):
    bed = make_bed(sqlite_db, stale_after_seconds=60)
    cs = bed.changeset()
    run(deliverer(bed, clock=later(3 * 3600 + 120)), cs)
    delayed = {m.message()["X-Herald-Delayed"] for m in bed.server.messages}
    assert delayed == {"3h2m"}
    fresh = bed.changeset()
    run(deliverer(bed), fresh)
    assert all(m.message()["X-Herald-Delayed"] is None for m in bed.server.messages[3:])


def test_a_retry_builds_only_the_recipients_still_open(bed: Bed, monkeypatch):
    from herald.notify.notifier import PreparedChange

    built: list[str] = []
    original = PreparedChange.wire

    def counting(self, recipient, **kwargs):
        built.append(recipient.address)
        return original(self, recipient, **kwargs)

    monkeypatch.setattr(PreparedChange, "wire", counting)
    bed.server.refuse_recipient("carol@example.org", "451 4.7.1 greylisted")
    cs = bed.changeset()
    run(deliverer(bed), cs)
    assert sorted(built) == list(RECIPIENTS)
    built.clear()
    bed.server.accept_recipient("carol@example.org")
    run(deliverer(bed, clock=later(1)), cs, holder="2")
    assert built == ["carol@example.org"]


def test_with_the_recorder_a_fenced_off_holder_records_nothing_either(make_bed, sqlite_db):
    from herald.delivery.recorder import Recorder

    bed = make_bed(sqlite_db)
    cs = bed.changeset()
    recorder = Recorder(bed.db)
    try:
        thief = StealAfterFirst(make_pool(bed.settings, max_connections=1), bed, cs)
        outcome = run(deliverer(bed, thief, batch=1, recorder=recorder), cs)
    finally:
        recorder.close()
    assert outcome.verdict is Verdict.LOST
    assert all(d.status is DeliveryStatus.PENDING for d in deliveries(bed.db, cs).values())


def test_the_recorder_commits_many_deliveries_outcomes_together(make_bed, sqlite_db):
    from herald.delivery.recorder import Recorder

    bed = make_bed(sqlite_db)
    changes = [bed.changeset() for _ in range(12)]
    recorder = Recorder(bed.db)
    pool = make_pool(bed.settings, max_connections=6)
    try:
        with ThreadPoolExecutor(6) as senders, ThreadPoolExecutor(6) as runs:
            d = deliverer(bed, pool, senders=senders, recorder=recorder)
            outcomes = list(runs.map(lambda cs: run(d, cs, holder=f"h{cs}"), changes))
    finally:
        recorder.close()
        pool.close()
    assert [o.verdict for o in outcomes] == [Verdict.DONE] * 12 and sum(o.sent for o in outcomes) == 36
    assert recorder.writes == 12  # each change: its outcomes and its settle, handed over together
    assert recorder.commits < recorder.writes  # ... grouped into fewer transactions
    ids = message_ids(bed.server)
    assert len(ids) == len(set(ids)) == 36


class SlowRelay:
    def __init__(self, inner, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds

    def send_bytes(self, raw, sender, recipient, *, message_id=None, utf8=False) -> Receipt:
        import time

        time.sleep(self.seconds)
        return self.inner.send_bytes(raw, sender, recipient, message_id=message_id)

    def probe(self) -> None:
        self.inner.probe()


def test_a_run_sends_nothing_once_its_lease_may_have_run_out(bed: Bed):
    """Nobody renews this lease (as for an inline run): once it may have gone to someone else, the run
    stops sending and leaves the rest due, instead of racing a successor."""
    cs = bed.changeset()
    slow = SlowRelay(make_pool(bed.settings, max_connections=1), 0.4)
    outcome = run(deliverer(bed, slow, lease_seconds=1.0, batch=1), cs)
    assert outcome.verdict is Verdict.RETRY and 1 <= outcome.sent < 3
    assert len(bed.server.messages) == outcome.sent
    assert run(deliverer(bed), cs, holder="next").verdict is Verdict.DONE
    ids = message_ids(bed.server)
    assert len(ids) == len(set(ids)) == 3
