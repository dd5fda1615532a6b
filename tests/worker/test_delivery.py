"""The delivery shared by inline mode and workers, against aiosmtpd and a real database: the per-changeset
lock, the ledger (a retry sends only what is not yet sent), per-recipient outcomes, and the log lines."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import update

from herald.config import DispatchMode
from herald.mail import make_transport
from herald.mail.transport import Receipt, Transport
from herald.outbox import DeliveryStatus, Notification, NotificationState
from herald.tracker import subscriptions
from herald.tracker.models import Changeset
from herald.worker import outbox
from herald.worker.delivery import Deliverer, Verdict
from tests.support.services import free_port
from tests.worker.conftest import RECIPIENTS, Bed, deliveries, message_ids, notification

START = re.compile(
    r"^Notification: Start notification changeset_id=\d+ artifact_id=\d+ recipients=\d+ mode=(inline|async)$"
)
END = re.compile(
    r"^Notification: End notification changeset_id=\d+ artifact_id=\d+ recipients=\d+ sent=\d+ failed=\d+ "
    r"retrying=\d+ duration_ms=\d+\.\d$"
)


def deliverer(bed: Bed, transport: Transport | None = None, **kwargs) -> Deliverer:
    return Deliverer(bed.db, bed.settings, transport or make_transport(bed.settings), **kwargs)


def run(d: Deliverer, changeset_id: int, holder: str = "test", **kwargs):
    return d.deliver(changeset_id, holder=holder, mode=DispatchMode.ASYNC, **kwargs)


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

    second = run(d, cs, holder="second")
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
        f"Notification: delivery failed changeset_id={cs} recipient=carol@example.org attempt=1 "
        "reply='550 5.1.1 <carol@example.org>: no such user'; permanent failure"
    ]


def test_a_recipient_past_delivery_max_attempts_fails_with_the_last_reply(make_bed, sqlite_db):
    bed = make_bed(sqlite_db, delivery_max_attempts=2)
    bed.server.refuse_recipient("bob@example.org", "450 4.2.1 mailbox busy")
    cs = bed.changeset()
    d = deliverer(bed)
    assert run(d, cs).verdict is Verdict.RETRY
    final = run(d, cs, holder="2")
    assert (final.verdict, final.sent, final.failed) == (Verdict.DONE, 2, 1)
    bob = deliveries(bed.db, cs)["bob@example.org"]
    assert bob.status is DeliveryStatus.FAILED and bob.attempts == 2
    assert bob.last_reply == "gave up after 2 attempts: 450 4.2.1 mailbox busy"


def test_an_unreachable_server_defers_the_other_recipients_without_counting_attempts(bed: Bed):
    nobody = dataclasses.replace(bed.settings, smtp_port=free_port())
    cs = bed.changeset()
    outcome = run(Deliverer(bed.db, nobody, make_transport(nobody)), cs)
    assert (outcome.verdict, outcome.sent, outcome.retrying) == (Verdict.RETRY, 0, 3)
    ledger = sorted(deliveries(bed.db, cs).values(), key=lambda d: d.address)
    assert [d.attempts for d in ledger] == [1, 0, 0]
    assert all(d.status is DeliveryStatus.RETRYING for d in ledger)
    assert "cannot reach SMTP server" in ledger[0].last_reply
    assert ledger[1].last_reply.startswith("deferred: SMTP server unavailable")
    assert notification(bed.db, cs).state is NotificationState.RETRYING


def test_the_lock_keeps_a_second_holder_out_until_the_lease_runs_out(bed: Bed):
    cs = bed.changeset()
    now = outbox.utcnow()
    with bed.db.session() as s:
        held = outbox.acquire(s, cs, "crashed-worker", 5, now=now)
    assert held.status is outbox.LockStatus.ACQUIRED
    busy = run(deliverer(bed), cs)
    assert busy.verdict is Verdict.BUSY and 5.0 < busy.delay <= 6.0
    assert bed.server.messages == []
    later = deliverer(bed, clock=lambda: outbox.utcnow() + timedelta(seconds=6))
    assert run(later, cs, holder="successor").verdict is Verdict.DONE
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


class StealAfterFirst(Transport):
    """Sends for real, then lets another holder take the lock (as if our lease had run out)."""

    def __init__(self, inner: Transport, bed: Bed, changeset_id: int) -> None:
        self.inner, self.bed, self.cs, self.sent = inner, bed, changeset_id, 0

    def send(self, message: EmailMessage, sender: str, recipient: str) -> Receipt:
        receipt = self.inner.send(message, sender, recipient)
        self.sent += 1
        with self.bed.db.session() as s:
            s.execute(update(Notification).where(Notification.changeset_id == self.cs).values(worker="thief"))
        return receipt

    def close(self) -> None:
        self.inner.close()


def test_a_holder_whose_lock_was_taken_over_stops_and_nobody_is_mailed_twice(bed: Bed):
    cs = bed.changeset()
    thief = StealAfterFirst(make_transport(bed.settings), bed, cs)
    outcome = run(deliverer(bed, thief), cs)
    assert outcome.verdict is Verdict.LOST and outcome.finished
    assert thief.sent == 1
    # The new holder's lease runs out without it finishing (it "crashed"); a third run completes the rest.
    with bed.db.session() as s:
        s.execute(
            update(Notification).where(Notification.changeset_id == cs).values(lease_until=outbox.utcnow())
        )
    assert run(deliverer(bed), cs, holder="third").verdict is Verdict.DONE
    ids = message_ids(bed.server)
    assert len(ids) == len(set(ids)) == 3


def test_shutdown_past_grace_stops_between_recipients_and_leaves_the_rest_due_now(bed: Bed):
    cs = bed.changeset()
    answers = iter([True, False])
    outcome = run(deliverer(bed), cs, keep_going=lambda: next(answers, False))
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
    outcome = run(deliverer(bed), cs, holder="2")
    assert (outcome.verdict, outcome.recipients, outcome.sent) == (Verdict.DONE, 2, 2)
    carol = deliveries(bed.db, cs)["carol@example.org"]
    assert carol.status is DeliveryStatus.FAILED and carol.last_reply.startswith("dropped")


class Broken(Transport):
    def send(self, message: EmailMessage, sender: str, recipient: str) -> Receipt:
        raise RuntimeError("bug in a transport")

    def close(self) -> None:
        pass


def test_an_unexpected_transport_error_is_retried_not_lost(bed: Bed):
    cs = bed.changeset()
    outcome = run(deliverer(bed, Broken()), cs)
    assert (outcome.verdict, outcome.retrying) == (Verdict.RETRY, 3)
    assert run(deliverer(bed), cs, holder="fixed").verdict is Verdict.DONE


def test_deliverer_needs_the_secret_key(bed: Bed):
    with pytest.raises(ValueError, match="secret_key"):
        Deliverer(bed.db, dataclasses.replace(bed.settings, secret_key=None), Broken())
