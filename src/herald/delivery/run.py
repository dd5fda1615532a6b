"""One delivery run: plan → lock → send → settle. The only code that sends notification mail, used by
inline mode (in the request) and by the backend workers alike.

1. **Plan**, without any lock: load the changeset and work out who is owed a mail (cheap; nothing is
   rendered yet). A duplicate job of a finished or busy changeset costs one look.
2. **Lock and sync**, one short transaction: take the changeset's lock, raising its fencing token, and bring
   the ledger up to date with the plan. The ledger says who is still owed: a retry sends only that.
3. **Send** the recipients due now, a batch at a time: render and build each one's wire bytes (only theirs),
   then send the batch in parallel through the relay's connection pool. Each batch's outcomes are recorded
   in one transaction that starts with the fence check, so a holder presumed dead records nothing over its
   successor; what was sent but not yet recorded when a process dies is the only thing a successor may send
   again (the "messages in flight").
4. **Settle**, with the last batch: ``done`` when every recipient is sent or failed for good, else
   ``retrying`` due at the earliest retry time.

Per recipient (see :mod:`herald.delivery.policy`): 5xx fails it with the reply recorded; 4xx and send
errors retry it with backoff until ``delivery_max_age``; a relay-level error (down, login refused, 421)
charges nobody: with a :class:`~herald.delivery.gate.RelayGate` (workers) the run holds until the relay is
back, without one (inline) it leaves those recipients open for the recovery worker.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, as_completed
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Connection

from herald.config import DispatchMode, Settings
from herald.delivery.gate import RelayGate
from herald.delivery.leases import HeldLeases
from herald.delivery.outcome import DeliveryOutcome, Verdict
from herald.delivery.policy import RetryPolicy, format_age
from herald.delivery.recorder import FENCED, Recorder
from herald.mail.errors import MailError, PermanentMailError
from herald.mail.transport import Receipt
from herald.notify.message import NOREPLY, mail_domain
from herald.notify.notifier import PreparedChange, prepare_change
from herald.notify.recipients import Recipient
from herald.notify.wire import Wire
from herald.outbox import ledger, lock
from herald.outbox.ledger import LedgerRow, Outcome
from herald.outbox.stats import smtp_class
from herald.outbox.tables import DeliveryStatus, NotificationState
from herald.tracker.db import Database
from herald.tracker.models import utcnow

__all__ = ["Deliverer", "Relay", "reply_text"]

#: The logger of the Start/End lines an admin reads (``herald.log`` for inline, ``worker.log`` for workers).
log = logging.getLogger("herald.notification")

_BUSY_MARGIN = 0.5  # look again this long after another holder's lease would run out
#: A send slower than this on average (a relay that makes us wait) fans a batch out to the sender threads.
FANOUT_ABOVE_SECONDS = 0.004
#: Recipients rendered and sent per batch (and recorded per transaction): bounds memory and the messages
#: in flight whatever the recipient count.
BATCH = 64


class Relay(Protocol):
    """What a delivery run needs of the mail side (:class:`herald.mail.RelayPool` and its peers)."""

    def send_bytes(
        self, raw: bytes, sender: str, recipient: str, *, message_id: str | None = None, utf8: bool = False
    ) -> Receipt: ...

    def probe(self) -> None: ...


def reply_text(exc: BaseException) -> str:
    """What to record of a mail failure: the server's code and reply, or the error when there was none."""
    if isinstance(exc, MailError) and exc.code is not None:
        return f"{exc.code} {exc.reply}".strip()
    return str(exc) or type(exc).__name__


def relay_down(exc: BaseException) -> bool:
    """Whether a send failed because of the relay itself rather than this recipient."""
    return isinstance(exc, MailError) and exc.relay_down


class _Held:
    """A send that was not tried, or failed on a relay-level error (``tried``, with the reply ``code`` if
    any): nobody is charged for it."""

    __slots__ = ("code", "reason", "tried")

    def __init__(self, reason: str, *, tried: bool = False, code: int | None = None) -> None:
        self.reason = reason
        self.tried = tried
        self.code = code


_STOPPING = "stopping"


class _Fenced(Exception):
    """Our fence is no longer the row's: another holder took the changeset over."""


def _always() -> bool:
    return True


class Deliverer:
    """Runs deliveries through one :class:`Relay`; thread-safe, share one per process.

    ``senders`` runs the sends of a batch in parallel (None: one after another in the calling thread).
    ``recorder`` writes each batch's outcomes and the settle: a threaded one commits many deliveries'
    together (workers); by default a synchronous one writes them at once in the run's own thread.
    ``gate``, when given, makes runs hold while the relay is down. ``leases`` collects the locks held now,
    for the process's lease keeper; without a keeper, ``lease_seconds`` must outlast a whole run.
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        relay: Relay,
        *,
        senders: Executor | None = None,
        gate: RelayGate | None = None,
        leases: HeldLeases | None = None,
        recorder: Recorder | None = None,
        lease_seconds: float | None = None,
        batch: int = BATCH,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if not settings.secret_key:
            raise ValueError("settings.secret_key is not set: build settings with ensure_secrets()")
        self.db = db
        self.settings = settings
        self.relay = relay
        self.senders = senders
        self.gate = gate
        self.leases = leases if leases is not None else HeldLeases()
        self.recorder = recorder if recorder is not None else Recorder(db, clock, threaded=False)
        self.policy = RetryPolicy.from_settings(settings)
        self.lease_seconds = settings.lease_seconds if lease_seconds is None else lease_seconds
        self.batch = max(1, batch)
        self.sender = f"{NOREPLY}@{mail_domain(settings)}"
        self._secret = settings.secret_key
        self._rng = rng
        self.clock = clock
        #: Moving average of a send's duration: the sends of a batch are fanned out to the sender threads
        #: only when sending waits (a slow relay); against a fast one the hand-offs between threads would
        #: cost more than they save, and the deliveries running side by side are parallel enough.
        self.send_seconds = FANOUT_ABOVE_SECONDS

    def deliver(
        self,
        changeset_id: int,
        *,
        holder: str,
        mode: DispatchMode,
        job_id: str | None = None,
        queued_at: datetime | None = None,
        keep_going: Callable[[], bool] = _always,
        max_recipients: int | None = None,
    ) -> DeliveryOutcome:
        """Deliver what ``changeset_id`` still owes. Never raises for a mail failure; database errors
        before the lock is taken propagate (nothing was changed).

        ``holder`` names this run in the lock (unique per call). ``keep_going`` is asked before each batch
        (and while holding for the relay); when it says no (shutdown past its grace period, or the job's
        queue lease was lost) the run stops and leaves the rest due at once, for whoever comes next.
        With ``max_recipients``, a change owed to more people is left alone (:attr:`Verdict.TOO_MANY`,
        nothing locked or sent): inline mode hands such a change to the workers.
        """
        started = time.perf_counter()
        with self.db.read() as session:
            # A look first, so that a duplicate job of a finished or busy changeset costs no planning.
            early = lock.peek(session.connection(), changeset_id, self.clock())
            prepared = None if early else prepare_change(session, self.settings, changeset_id, self._secret)
        if early is None and prepared is None:
            early = lock.LockAttempt(lock.LockStatus.GONE)
        if early is not None:
            return self._not_locked(changeset_id, early)
        assert prepared is not None
        if max_recipients is not None and len(prepared.recipients) > max_recipients:
            return DeliveryOutcome(
                Verdict.TOO_MANY,
                changeset_id,
                artifact_id=prepared.artifact_id,
                recipients=len(prepared.recipients),
                reason=f"{len(prepared.recipients)} recipients, more than {max_recipients}",
            )
        now = self.clock()
        planned = [(r.address, r.user_id, str(r.reason)) for r in prepared.recipients]
        with self.db.write() as conn:
            attempt = lock.acquire(
                conn, changeset_id, holder, self.lease_seconds, now=now, job_id=job_id, queued_at=queued_at
            )
            rows = ledger.sync(conn, changeset_id, planned, now) if attempt.lease is not None else {}
        if attempt.lease is None:
            return self._not_locked(changeset_id, attempt)
        lease = attempt.lease
        self.leases.add(lease)
        run = _Run(self, lease, prepared, rows, mode, started, keep_going)
        try:
            return run.run()
        except Exception as exc:  # a bug or the database failing mid-way: release, retry later
            return self._abandon(lease, exc, started, run)
        finally:
            self.leases.discard(lease)

    def _not_locked(self, changeset_id: int, attempt: lock.LockAttempt) -> DeliveryOutcome:
        if attempt.status is lock.LockStatus.GONE:
            log.info("Notification: changeset_id=%d no longer exists; nothing to send", changeset_id)
            return DeliveryOutcome(Verdict.GONE, changeset_id, reason="changeset no longer exists")
        if attempt.status is lock.LockStatus.FINISHED:
            log.debug("Notification: changeset_id=%d is already done", changeset_id)
            return DeliveryOutcome(Verdict.DONE, changeset_id, reason="already done")
        now = self.clock()
        until = attempt.busy_until or now
        delay = max(0.0, (until - now).total_seconds()) + _BUSY_MARGIN
        log.info(
            "Notification: changeset_id=%d is being delivered by another process; again in %.1fs",
            changeset_id,
            delay,
        )
        return DeliveryOutcome(Verdict.BUSY, changeset_id, delay=delay, reason="held by another process")

    def _abandon(self, lease: lock.Lease, exc: Exception, started: float, run: _Run) -> DeliveryOutcome:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        log.exception("Notification: delivery of changeset_id=%d broke off: %s", lease.changeset_id, reason)
        delay = self.policy.broken_run_delay(lease.attempts, self._rng)
        now = self.clock()
        try:
            with self.db.write() as conn:
                lock.finish(
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
            attempts=dict(run.attempts),
            latencies=tuple(run.latencies),
        )

    # --- sending one message (runs on a sender thread) -------------------------------------------------

    def send_one(
        self, wire: Wire, keep_going: Callable[[], bool] = _always
    ) -> Receipt | BaseException | _Held:
        """Send one wire message; never raises (the outcome is the return value). Not tried (held, nobody
        charged) while the relay gate is closed or once the run is told to stop."""
        gate = self.gate
        if gate is not None and not gate.is_open:
            return _Held(gate.reason)
        if not keep_going():
            return _Held(_STOPPING)
        started = time.perf_counter()
        try:
            receipt = self.relay.send_bytes(wire.raw, self.sender, wire.address, message_id=wire.message_id)
            self.send_seconds += (time.perf_counter() - started - self.send_seconds) * 0.1
            return receipt
        except Exception as exc:
            if relay_down(exc):
                if gate is not None:
                    gate.report_down(reply_text(exc))
                return _Held(reply_text(exc), tried=True, code=getattr(exc, "code", None))
            return exc


class _Run:
    """One locked delivery run of one prepared change."""

    def __init__(
        self,
        d: Deliverer,
        lease: lock.Lease,
        prepared: PreparedChange,
        rows: dict[str, LedgerRow],
        mode: DispatchMode,
        started: float,
        keep_going: Callable[[], bool],
    ) -> None:
        self.d = d
        self.lease = lease
        self.cs = lease.changeset_id
        self.prepared = prepared
        self.rows = rows
        self.mode = mode
        self.started = started
        self.keep_going = keep_going
        self.interrupted = False
        self.held: list[Recipient] = []
        self.last_error: str | None = None
        self.outcomes: list[Outcome] = []  # not yet handed to the database
        self.pending: list[Future[object]] = []  # handed to the recorder, not yet confirmed
        #: For the metrics: this run's sends by (outcome, SMTP class), and commit-to-sent seconds.
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.latencies: list[float] = []

    def run(self) -> DeliveryOutcome:
        try:
            return self._run()
        except _Fenced:
            log.warning(
                "Notification: lock on changeset_id=%d taken over by another process (fence %d); "
                "its late writes were refused",
                self.cs,
                self.lease.fence,
            )
            return DeliveryOutcome(
                Verdict.LOST,
                self.cs,
                artifact_id=self.prepared.artifact_id,
                reason="fenced off",
                attempts=dict(self.attempts),
                latencies=tuple(self.latencies),
            )

    def _run(self) -> DeliveryOutcome:
        prepared = self.prepared
        log.info(
            "Notification: Start notification changeset_id=%d artifact_id=%d recipients=%d mode=%s",
            self.cs,
            prepared.artifact_id,
            len(prepared.recipients),
            self.mode.value,
        )
        now = self.d.clock()
        todo = deque(r for r in prepared.recipients if self.rows[r.address].due(now))
        age = (now - self.lease.created_at).total_seconds()
        delayed = format_age(age) if age >= self.d.settings.stale_after_seconds else None
        while todo:
            if not self.keep_going():
                self.interrupted = True
                break
            if not self._relay_usable():
                break
            chunk = [todo.popleft() for _ in range(min(self.d.batch, len(todo)))]
            held = self._send(chunk, delayed)
            if held:
                if self.d.gate is None:  # inline: leave them open for the recovery worker
                    self.held.extend(held)
                else:
                    todo.extendleft(reversed(held))
            if todo:
                self._flush()
        return self._settle()

    def _relay_usable(self) -> bool:
        """With a gate: wait while it is closed (the relay is down); False if told to stop meanwhile."""
        gate = self.d.gate
        if gate is None or gate.is_open:
            return True
        while not gate.wait_open(1.0):
            if not self.keep_going():
                self.interrupted = True
                return False
        return True

    def _flush(self) -> None:
        """Between batches: hand the batch's outcomes to the recorder (without waiting for a threaded
        one); raise :class:`_Fenced` once the fence is known lost."""
        outcomes, self.outcomes = self.outcomes, []
        if outcomes:
            self.pending.append(self.d.recorder.record(self.lease, outcomes))
        if any(f.done() and f.exception() is None and f.result() is FENCED for f in self.pending):
            raise _Fenced()

    def _confirm(self) -> None:
        """Wait until the recorder wrote every outcome handed to it; raise :class:`_Fenced` if the fence
        was lost (or the write's error)."""
        pending, self.pending = self.pending, []
        if any(self._answer(f) is FENCED for f in pending):
            raise _Fenced()

    def _answer(self, future: Future[object]) -> object:
        """The recorder's answer; if none comes within a lease, the run breaks off (its job is retried)
        rather than wait for ever: the lock would be lost by then anyway."""
        try:
            return future.result(timeout=self.lease.seconds)
        except TimeoutError:
            raise RuntimeError(
                f"the outcome recorder did not answer within {self.lease.seconds:g}s"
            ) from None

    def _send(self, chunk: Sequence[Recipient], delayed: str | None) -> list[Recipient]:
        """Render and send one batch, emitting each outcome as it completes; return the recipients held
        back."""
        wires: list[tuple[Recipient, Wire]] = []
        for recipient in chunk:
            try:
                wires.append((recipient, self.prepared.wire(recipient, delayed=delayed)))
            except ValueError as exc:  # an address or header that must not go out: never sendable
                reply = f"not sent: {exc}"
                self._log_failure(recipient, reply, "permanent failure")
                self.attempts["failed", "none"] += 1
                self.outcomes.append(
                    Outcome(recipient.address, DeliveryStatus.FAILED, reply=reply, attempted=False)
                )
        senders = self.d.senders

        def go() -> bool:  # asked before each send: told to stop, or our lease may have gone (frozen)?
            return self.keep_going() and self.d.leases.alive(self.lease)

        if senders is None or len(wires) <= 1 or self.d.send_seconds < FANOUT_ABOVE_SECONDS:
            results = [(item, self.d.send_one(item[1], go)) for item in wires]
        else:
            futures = {senders.submit(self.d.send_one, item[1], go): item for item in wires}
            results = ((futures[f], f.result()) for f in as_completed(futures))
        held: list[Recipient] = []
        for (recipient, wire), result in results:
            if isinstance(result, _Held):
                if result.reason == _STOPPING:
                    self.interrupted = True
                    continue
                if result.tried:
                    self.attempts["held", smtp_class(result.code)] += 1
                held.append(recipient)
                self.last_error = f"relay: {result.reason}"
            elif isinstance(result, Receipt):
                reply = f"{result.code} {result.reply}".strip()
                mid = result.message_id or wire.message_id
                self.attempts["sent", smtp_class(result.code)] += 1
                self.latencies.append((self.d.clock() - self.lease.created_at).total_seconds())
                log.info(
                    "Notification: sent changeset_id=%d recipient=%s reply=%r",
                    self.cs,
                    recipient.address,
                    reply,
                )
                self.outcomes.append(Outcome(recipient.address, DeliveryStatus.SENT, reply, mid))
            else:
                self.outcomes.append(self._failed(recipient, result, self.d.clock()))
        return held

    def _failed(self, recipient: Recipient, exc: BaseException, now: datetime) -> Outcome:
        reply = reply_text(exc)
        code = exc.code if isinstance(exc, MailError) else None
        if isinstance(exc, PermanentMailError):
            self._log_failure(recipient, reply, "permanent failure")
            self.attempts["failed", smtp_class(code)] += 1
            return Outcome(recipient.address, DeliveryStatus.FAILED, reply=reply)
        if not isinstance(exc, MailError):  # a transport bug must not lose the recipient: retry like a 4xx
            log.error(
                "Notification: unexpected error sending changeset_id=%d: %s", self.cs, reply, exc_info=exc
            )
        row = self.rows[recipient.address]
        first = row.first_failed_at or now
        next_at = self.d.policy.next_try(row.attempts + 1, first, now, self.d._rng)
        if next_at is None:
            verdict = f"gave up after {format_age((now - first).total_seconds())} of failures"
            self._log_failure(recipient, reply, verdict)
            self.attempts["failed", smtp_class(code)] += 1
            return Outcome(
                recipient.address, DeliveryStatus.FAILED, reply=f"{verdict}: {reply}", failed_at=now
            )
        self.last_error = f"{recipient.address}: {reply}"
        self.attempts["retrying", smtp_class(code)] += 1
        self._log_failure(recipient, reply, f"will retry in {format_age((next_at - now).total_seconds())}")
        return Outcome(
            recipient.address, DeliveryStatus.RETRYING, reply=reply, next_attempt_at=next_at, failed_at=now
        )

    def _log_failure(self, recipient: Recipient, reply: str, verdict: str) -> None:
        log.warning(
            "Notification: delivery failed changeset_id=%d recipient=%s reply=%r; %s",
            self.cs,
            recipient.address,
            reply,
            verdict,
        )

    def _decide(
        self, conn: Connection, tally: ledger.Tally, now: datetime
    ) -> tuple[Verdict, float, ledger.Tally]:
        """Release the lock as the ledger now stands: ``done``, or ``retrying`` due at the earliest retry."""
        if tally.open == 0:
            lock.finish(conn, self.lease, NotificationState.DONE, now=now)
            return Verdict.DONE, 0.0, tally
        due = now if tally.unscheduled or tally.next_due is None else max(now, tally.next_due)
        if self.held and self.d.gate is None:  # inline, relay down: the recovery worker probes
            due = max(due, now + timedelta(seconds=RetryPolicy.probe_delay(2)))
        error = self.last_error or ("interrupted by shutdown" if self.interrupted else None)
        lock.finish(
            conn, self.lease, NotificationState.RETRYING, now=now, next_attempt_at=due, last_error=error
        )
        return Verdict.RETRY, (due - now).total_seconds(), tally

    def _settle(self) -> DeliveryOutcome:
        self._confirm()
        decided = self._answer(self.d.recorder.settle(self.lease, self.outcomes, self._decide))
        if decided is FENCED:
            raise _Fenced()
        verdict, delay, tally = decided
        duration_ms = (time.perf_counter() - self.started) * 1000
        outcome = DeliveryOutcome(
            verdict,
            self.cs,
            artifact_id=self.prepared.artifact_id,
            recipients=len(self.prepared.recipients),
            sent=tally[DeliveryStatus.SENT],
            failed=tally[DeliveryStatus.FAILED],
            retrying=tally.open,
            held=len(self.held),
            delay=delay,
            duration_ms=duration_ms,
            reason=self.last_error or "",
            attempts=dict(self.attempts),
            latencies=tuple(self.latencies),
        )
        log.info(
            "Notification: End notification changeset_id=%d artifact_id=%d recipients=%d sent=%d failed=%d "
            "retrying=%d duration_ms=%.1f",
            self.cs,
            self.prepared.artifact_id,
            outcome.recipients,
            outcome.sent,
            outcome.failed,
            outcome.retrying,
            duration_ms,
        )
        return outcome
