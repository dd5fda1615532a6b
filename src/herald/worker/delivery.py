"""Delivering one changeset's notification: the code inline mode and the workers both run.

``Deliverer.deliver(changeset_id)`` asks the notifier for the plan (recipients and ready messages, read
without any lock), takes the per-changeset lock (:mod:`herald.worker.outbox`) and brings the ledger
(:mod:`herald.worker.ledger`) up to date in one short transaction, sends to every recipient not yet
``sent`` or ``failed``, commits each outcome right after its send (with the next recipient's attempt in
the same transaction), and releases the lock with the notification ``done`` or ``retrying``. The
returned :class:`DeliveryOutcome` tells the caller what to do with the job: ack it, or give it back.

Per recipient: 4xx and connection errors are retried (one schedule per notification, exponential backoff
with full jitter), 5xx fails that recipient for good with the reply recorded, and so does the last allowed
attempt. When the server itself is unreachable the recipients not yet tried wait for the next round
instead of each paying a connection timeout.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection

from herald.config import Settings
from herald.mail.errors import (
    MailConfigError,
    MailConnectionError,
    MailError,
    PermanentMailError,
    TransientMailError,
)
from herald.mail.transport import Transport
from herald.notify.message import NOREPLY, mail_domain
from herald.notify.notifier import NotificationPlan, Outgoing, plan_notification
from herald.tracker.db import Database
from herald.tracker.models import DeliveryStatus, DispatchMode, NotificationState
from herald.worker import ledger, outbox
from herald.worker.retry import RetryPolicy
from herald.worker.store import Store

__all__ = ["Deliverer", "DeliveryOutcome", "Verdict"]

#: The logger of the Start/End lines an admin reads (``herald.log`` for inline, ``worker.log`` for workers).
log = logging.getLogger("herald.notification")

_BUSY_MARGIN = 0.5  # look again this long after another holder's lease would run out


class Verdict(enum.StrEnum):
    """What became of one delivery run, and so of the job that asked for it."""

    DONE = "done"  # every recipient sent or failed for good (or nobody to mail): ack
    RETRY = "retry"  # some recipients wait for another round after ``delay``
    GONE = "gone"  # the changeset no longer exists: ack
    BUSY = "busy"  # another process is delivering it right now: look again after ``delay``
    LOST = "lost"  # our lock was taken over mid-way; the new holder finishes: ack


@dataclass(frozen=True)
class DeliveryOutcome:
    """The result of :meth:`Deliverer.deliver`; counts are the ledger's, all rounds included."""

    verdict: Verdict
    changeset_id: int
    artifact_id: int | None = None
    recipients: int = 0
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    delay: float = 0.0
    duration_ms: float = 0.0
    reason: str = ""

    @property
    def finished(self) -> bool:
        """Whether the job that asked for this run is done with (ack), rather than due again later."""
        return self.verdict in (Verdict.DONE, Verdict.GONE, Verdict.LOST)


def _always() -> bool:
    return True


def reply_text(exc: MailError) -> str:
    """What to record of a mail failure: the server's code and reply, or the error when there was none."""
    if exc.code is not None:
        return f"{exc.code} {exc.reply}".strip()
    return str(exc)


class Deliverer:
    """Delivers notifications through one transport. One instance per thread (the transport is one SMTP
    connection); the :class:`~herald.worker.store.Store` may be shared."""

    def __init__(
        self,
        store: Store | Database,
        settings: Settings,
        transport: Transport,
        *,
        lease_seconds: float | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = outbox.utcnow,
    ) -> None:
        """``lease_seconds`` (default ``settings.lease_seconds``) is how long the lock holds without a
        renewal; it is renewed around every send."""
        if not settings.secret_key:
            raise ValueError("settings.secret_key is not set: build settings with ensure_secrets()")
        self.store = store if isinstance(store, Store) else Store(store)
        self.settings = settings
        self.transport = transport
        self.policy = RetryPolicy.from_settings(settings)
        self.lease_seconds = settings.lease_seconds if lease_seconds is None else lease_seconds
        self.sender = f"{NOREPLY}@{mail_domain(settings)}"
        self._secret = settings.secret_key
        self._rng = rng
        self._clock = clock

    def deliver(
        self,
        changeset_id: int,
        *,
        holder: str,
        mode: DispatchMode,
        job_id: str | None = None,
        queued_at: datetime | None = None,
        keep_going: Callable[[], bool] = _always,
    ) -> DeliveryOutcome:
        """Deliver what ``changeset_id`` still owes. Never raises for a mail failure; database errors
        before the lock is taken propagate (nothing was changed).

        ``holder`` names this run in the lock (unique per call). ``keep_going`` is asked before each
        recipient; when it says no (shutdown past its grace period) the run stops and leaves the rest
        due at once, for whoever comes next.
        """
        started = time.perf_counter()
        with self.store.read() as session:
            # A look first, so that a duplicate job of a finished or busy changeset costs no planning.
            early = outbox.peek(session, changeset_id, self._clock())
            plan = None if early else plan_notification(session, self.settings, changeset_id, self._secret)
        if early is None and plan is None:
            early = outbox.LockAttempt(outbox.LockStatus.GONE)
        if early is None:
            assert plan is not None
            now = self._clock()
            with self.store.write() as conn:
                attempt = outbox.acquire(
                    conn,
                    changeset_id,
                    holder,
                    self.lease_seconds,
                    now=now,
                    job_id=job_id,
                    queued_at=queued_at,
                )
                statuses = ledger.sync(conn, plan, now) if attempt.lease is not None else {}
            if attempt.lease is not None:
                try:
                    return _Run(self, attempt.lease, mode, started, keep_going).run(plan, statuses)
                except Exception as exc:  # a bug or the database failing mid-way: release, retry later
                    return self._abandon(attempt.lease, exc, started)
            early = attempt
        return self._not_locked(changeset_id, early)

    def _not_locked(self, changeset_id: int, attempt: outbox.LockAttempt) -> DeliveryOutcome:
        if attempt.status is outbox.LockStatus.GONE:
            log.info("Notification: changeset_id=%d no longer exists; nothing to send", changeset_id)
            return DeliveryOutcome(Verdict.GONE, changeset_id, reason="changeset no longer exists")
        if attempt.status is outbox.LockStatus.FINISHED:
            log.debug("Notification: changeset_id=%d is already done", changeset_id)
            return DeliveryOutcome(Verdict.DONE, changeset_id, reason="already done")
        now = self._clock()
        until = outbox.aware(attempt.busy_until) or now
        delay = max(0.0, (until - now).total_seconds()) + _BUSY_MARGIN
        log.info(
            "Notification: changeset_id=%d is being delivered by another process; again in %.1fs",
            changeset_id,
            delay,
        )
        return DeliveryOutcome(Verdict.BUSY, changeset_id, delay=delay, reason="held by another process")

    def _abandon(self, lease: outbox.Lease, exc: Exception, started: float) -> DeliveryOutcome:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        log.exception("Notification: delivery of changeset_id=%d broke off: %s", lease.changeset_id, reason)
        delay = max(1.0, self.policy.delay(2, self._rng))
        now = self._clock()
        try:
            with self.store.write() as conn:
                outbox.finish(
                    conn,
                    lease,
                    NotificationState.RETRYING,
                    now=now,
                    next_attempt_at=now + timedelta(seconds=delay),
                    last_error=reason,
                )
        except Exception:  # the database is down too: the lease runs out and the relay takes over
            log.warning("Notification: could not release changeset_id=%d", lease.changeset_id, exc_info=True)
        return DeliveryOutcome(
            Verdict.RETRY,
            lease.changeset_id,
            delay=delay,
            duration_ms=(time.perf_counter() - started) * 1000,
            reason=reason,
        )


@dataclass(frozen=True)
class _Sent:
    """A send whose outcome is not yet committed."""

    address: str
    status: DeliveryStatus
    reply: str
    message_id: str | None


class _Run:
    """One locked delivery run over one plan."""

    def __init__(
        self,
        deliverer: Deliverer,
        lease: outbox.Lease,
        mode: DispatchMode,
        started: float,
        keep_going: Callable[[], bool],
    ) -> None:
        self.d = deliverer
        self.store = deliverer.store
        self.lease = lease
        self.cs = lease.changeset_id
        self.mode = mode
        self.started = started
        self.keep_going = keep_going
        self.lost = False
        self.interrupted = False
        self.server_down: str | None = None
        self.deferred: list[str] = []
        self.last_error: str | None = None
        self.unrecorded: _Sent | None = None

    def now(self) -> datetime:
        return self.d._clock()

    def run(self, plan: NotificationPlan, statuses: dict[str, DeliveryStatus]) -> DeliveryOutcome:
        log.info(
            "Notification: Start notification changeset_id=%d artifact_id=%d recipients=%d mode=%s",
            self.cs,
            plan.artifact_id,
            plan.recipients,
            self.mode.value,
        )
        for out in plan.outgoing:
            if statuses.get(out.address) in ledger.FINAL:
                continue
            if self.server_down is not None:
                self.deferred.append(out.address)
                continue
            if not self.keep_going():
                self.interrupted = True
                break
            self._one(out)
            if self.lost:
                break
        return self._finish(plan)

    def _record_unrecorded(self, conn: Connection, now: datetime) -> None:
        sent, self.unrecorded = self.unrecorded, None
        if sent is not None:
            ledger.record(
                conn,
                self.cs,
                sent.address,
                sent.status,
                now=now,
                reply=sent.reply,
                message_id=sent.message_id,
            )

    def _one(self, out: Outgoing) -> None:
        # One transaction commits the previous recipient's outcome and counts this one's attempt.
        with self.store.write() as conn:
            now = self.now()
            self._record_unrecorded(conn, now)
            if not outbox.renew(conn, self.lease, now):
                self.lost = True
                return
            attempts = ledger.begin_attempt(conn, self.cs, out.address, now)
        if attempts is None:  # finished by an earlier holder after our plan was read
            return
        status, reply, message_id = self._send(out, attempts)
        self.unrecorded = _Sent(out.address, status, reply, message_id)

    def _send(self, out: Outgoing, attempts: int) -> tuple[DeliveryStatus, str, str | None]:
        try:
            receipt = self.d.transport.send(out.message, self.d.sender, out.address)
        except PermanentMailError as exc:
            reply = reply_text(exc)
            self._failure(out, attempts, reply, "permanent failure")
            return DeliveryStatus.FAILED, reply, None
        except TransientMailError as exc:
            reply = reply_text(exc)
            if isinstance(exc, MailConnectionError | MailConfigError):
                # The server (or herald's account on it) is the problem, not this recipient.
                self.server_down = reply
            return self._transient(out, attempts, reply)
        except Exception as exc:  # a transport bug must not lose the recipient: retry like a 4xx
            log.exception("Notification: unexpected error sending changeset_id=%d", self.cs)
            return self._transient(out, attempts, f"{type(exc).__name__}: {exc}")
        reply = f"{receipt.code} {receipt.reply}".strip()
        return DeliveryStatus.SENT, reply, receipt.message_id or out.message_id

    def _transient(self, out: Outgoing, attempts: int, reply: str) -> tuple[DeliveryStatus, str, None]:
        if self.d.policy.exhausted(attempts):
            self._failure(out, attempts, reply, f"gave up after {attempts} attempts")
            return DeliveryStatus.FAILED, f"gave up after {attempts} attempts: {reply}", None
        self.last_error = f"{out.address}: {reply}"
        self._failure(out, attempts, reply, "will retry")
        return DeliveryStatus.RETRYING, reply, None

    def _failure(self, out: Outgoing, attempts: int, reply: str, verdict: str) -> None:
        log.warning(
            "Notification: delivery failed changeset_id=%d recipient=%s attempt=%d reply=%r; %s",
            self.cs,
            out.address,
            attempts,
            reply,
            verdict,
        )

    def _finish(self, plan: NotificationPlan) -> DeliveryOutcome:
        now = self.now()
        delay = 0.0
        with self.store.write() as conn:
            self._record_unrecorded(conn, now)
            if self.deferred and self.server_down is not None:
                ledger.defer(
                    conn,
                    self.cs,
                    self.deferred,
                    f"deferred: SMTP server unavailable ({self.server_down})",
                    now,
                )
            tally, most = ledger.counts(conn, self.cs, (o.address for o in plan.outgoing))
            open_ = tally[DeliveryStatus.PENDING] + tally[DeliveryStatus.RETRYING]
            if self.lost:
                verdict = Verdict.LOST
            elif open_ == 0:
                failed = tally[DeliveryStatus.FAILED]
                error = f"{failed} recipient(s) failed for good" if failed else None
                held = outbox.finish(conn, self.lease, NotificationState.DONE, now=now, last_error=error)
                verdict = Verdict.DONE if held else Verdict.LOST
            else:
                if not self.interrupted:
                    delay = self.d.policy.delay(max(most, 1), self.d._rng)
                due = now + timedelta(seconds=delay)
                ledger.schedule(conn, self.cs, due)
                held = outbox.finish(
                    conn,
                    self.lease,
                    NotificationState.RETRYING,
                    now=now,
                    next_attempt_at=due,
                    last_error=self.last_error or ("interrupted by shutdown" if self.interrupted else None),
                )
                verdict = Verdict.RETRY if held else Verdict.LOST
        if verdict is Verdict.LOST:
            log.warning(
                "Notification: lock on changeset_id=%d taken over by another process; leaving it the rest",
                self.cs,
            )
        duration_ms = (time.perf_counter() - self.started) * 1000
        outcome = DeliveryOutcome(
            verdict,
            self.cs,
            artifact_id=plan.artifact_id,
            recipients=plan.recipients,
            sent=tally[DeliveryStatus.SENT],
            failed=tally[DeliveryStatus.FAILED],
            retrying=open_,
            delay=delay,
            duration_ms=duration_ms,
            reason=self.last_error or "",
        )
        log.info(
            "Notification: End notification changeset_id=%d artifact_id=%d recipients=%d sent=%d failed=%d "
            "retrying=%d duration_ms=%.1f",
            self.cs,
            plan.artifact_id,
            outcome.recipients,
            outcome.sent,
            outcome.failed,
            outcome.retrying,
            duration_ms,
        )
        return outcome
