"""``herald worker --id N``: claim a job, deliver its changeset, settle the job; until told to stop.

Claims block on the queue (a job is picked up as soon as it is pushed). For each job a keeper thread renews
the queue lease and the notification lock, so a long job is not taken for a dead one. A queue outage is met
with backoff and reconnection, never a crash. On SIGTERM (or SIGINT) the worker stops claiming, finishes
the job in hand within ``worker_grace_seconds`` (past it, the recipients not yet tried are handed back to
the queue at once), and exits 0.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
import uuid
from datetime import UTC, datetime
from types import FrameType

from herald.config import Settings
from herald.mail import make_transport
from herald.mail.transport import Transport
from herald.queue import Job, LeaseLost, Queue, QueueError, make_queue
from herald.tracker.db import Database
from herald.tracker.models import DispatchMode
from herald.worker import outbox
from herald.worker.delivery import Deliverer, DeliveryOutcome, Verdict
from herald.worker.heartbeat import process_name
from herald.worker.hooks import HeartbeatHook, Hook, Hooks, JobResult, LogHook
from herald.worker.retry import backoff
from herald.worker.store import Store

__all__ = ["CLAIM_TIMEOUT_SECONDS", "LeaseKeeper", "Worker"]

log = logging.getLogger("herald.worker")

#: Longest a claim blocks; also how fast an idle worker notices a stop request.
CLAIM_TIMEOUT_SECONDS = 1.0
#: Backoff while the queue is unreachable: from a tenth of a second up to this.
QUEUE_BACKOFF_MAX_SECONDS = 5.0


class LeaseKeeper:
    """While a job runs, renews its queue lease and its notification lock every third of a lease.

    ``lost`` is set when the queue says the lease is gone (the job went to another worker): the delivery
    then stops before its next recipient.
    """

    def __init__(self, queue: Queue, store: Store, job: Job, holder: str, lease_seconds: float) -> None:
        self.queue = queue
        self.store = store
        self.job = job
        self.lease = outbox.Lease(job.changeset_id, holder, lease_seconds)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._interval = max(0.05, lease_seconds / 3)
        self._thread = threading.Thread(target=self._run, name=f"lease-{job.id[:8]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.queue.extend(self.job)
            except LeaseLost:
                log.warning("lease of job %s lost to another worker; stopping it", self.job.id)
                self.lost.set()
                return
            except QueueError as exc:  # unreachable for now: the lock below still holds the changeset
                log.warning("could not extend the lease of job %s: %s", self.job.id, exc)
            try:
                with self.store.write() as conn:
                    outbox.renew(conn, self.lease, outbox.utcnow())
            except Exception as exc:
                log.warning("could not renew the lock of changeset_id=%d: %s", self.job.changeset_id, exc)


class Worker:
    """One worker process's loop. ``run()`` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        worker_id: int,
        *,
        db: Database | None = None,
        queue: Queue | None = None,
        transport: Transport | None = None,
        hooks: list[Hook] | None = None,
        parent_pid: int | None = None,
    ) -> None:
        self.settings = settings
        self.name = f"worker-{worker_id}"
        #: The queue consumer and heartbeat name: unique across machines.
        self.consumer = process_name(self.name)
        self.pid = os.getpid()
        self.db = db or Database(settings.database_url)
        self.queue = queue or make_queue(settings)
        self.transport = transport or make_transport(settings)
        self.store = Store(self.db)
        self.deliverer = Deliverer(self.store, settings, self.transport)
        self.hooks = Hooks(hooks if hooks is not None else [LogHook(), HeartbeatHook(self.db)])
        self.jobs_done = 0
        self._parent_pid = parent_pid
        self._stop = threading.Event()
        self._stop_at = 0.0
        self._keeper: LeaseKeeper | None = None
        self._rng = random.Random()

    # --- stopping -------------------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        """Stop claiming; the job in hand gets ``worker_grace_seconds`` to finish. Signal-safe."""
        if not self._stop.is_set():
            self._stop_at = time.monotonic()
            self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            if not self._stop.is_set():
                log.info(
                    "%s received %s: finishing the job in hand, then exiting",
                    self.name,
                    signal.Signals(signum).name,
                )
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _keep_going(self) -> bool:
        keeper = self._keeper
        if keeper is not None and keeper.lost.is_set():
            return False
        grace_over = time.monotonic() > self._stop_at + self.settings.worker_grace_seconds
        return not (self._stop.is_set() and grace_over)

    def _orphaned(self) -> bool:
        return self._parent_pid is not None and os.getppid() != self._parent_pid

    # --- the loop -------------------------------------------------------------------------------------

    def run(self) -> int:
        self.hooks.worker_started(self)
        outage = 0
        try:
            while not self._stop.is_set():
                if self._orphaned():
                    log.warning("%s: its supervisor is gone; exiting", self.name)
                    break
                try:
                    job = self.queue.claim(self.consumer, CLAIM_TIMEOUT_SECONDS)
                except QueueError as exc:
                    outage += 1
                    delay = backoff(outage, base=0.1, cap=QUEUE_BACKOFF_MAX_SECONDS, rng=self._rng) + 0.05
                    if outage == 1:
                        log.warning("%s: queue unavailable (%s); retrying with backoff", self.name, exc)
                    self._stop.wait(delay)
                    continue
                if outage:
                    log.info("%s: queue reachable again after %d failed claim(s)", self.name, outage)
                    outage = 0
                if job is not None:
                    self.process(job)
        finally:
            self.hooks.worker_stopping(self)
            self._close()
        return 0

    def process(self, job: Job) -> JobResult:
        """Deliver one claimed job and settle it with the queue."""
        started = time.perf_counter()
        self.hooks.job_received(self, job)
        holder = f"{self.name}:{self.pid}:{uuid.uuid4().hex[:12]}"
        outcome: DeliveryOutcome | None = None
        reason = ""
        with LeaseKeeper(self.queue, self.store, job, holder, self.settings.lease_seconds) as keeper:
            self._keeper = keeper
            try:
                outcome = self.deliverer.deliver(
                    job.changeset_id,
                    holder=holder,
                    mode=DispatchMode.ASYNC,
                    job_id=job.id,
                    queued_at=datetime.fromtimestamp(job.enqueued_at, UTC),
                    keep_going=self._keep_going,
                )
            except Exception as exc:  # the database failed before the lock was taken: nothing changed
                reason = f"{type(exc).__name__}: {exc}"[:500]
                log.exception("%s: job %s failed", self.name, job.id)
            finally:
                self._keeper = None
        result = self._settle(job, outcome, reason, started)
        self.jobs_done += 1
        self.hooks.job_settled(self, result)
        return result

    def _settle(self, job: Job, outcome: DeliveryOutcome | None, reason: str, started: float) -> JobResult:
        at_limit = job.attempts >= self.settings.job_max_attempts
        if outcome is not None and outcome.finished:
            action, delay = "ack", 0.0
        elif outcome is not None and outcome.verdict is Verdict.BUSY:
            # Another process holds the changeset (a duplicate job). Look again once its lease would have
            # run out; at the attempt limit just drop this copy: if the holder dies, the relay re-pushes.
            action, delay, reason = ("ack" if at_limit else "retry"), outcome.delay, outcome.reason
        else:
            action = "retry"
            s = self.settings
            delay = (
                outcome.delay
                if outcome is not None
                else backoff(job.attempts, base=s.retry_base_seconds, cap=s.retry_max_seconds)
            )
            reason = (outcome.reason if outcome is not None else reason) or "retry"
            if at_limit:
                action = "dead"
                reason = f"gave up after {job.attempts} attempts; last error: {reason}"
        try:
            if action == "ack":
                self.queue.ack(job)
            elif action == "retry":
                self.queue.retry(job, delay, reason)
            else:
                self.queue.dead(job, reason)
                with self.store.write() as conn:
                    outbox.mark_dead(conn, job.changeset_id, reason, now=outbox.utcnow(), job_id=job.id)
        except Exception as exc:  # its lease runs out and another claim settles it: nothing is lost
            log.warning("%s: could not %s job %s: %s", self.name, action, job.id, exc)
        duration_ms = (time.perf_counter() - started) * 1000
        return JobResult(job, action, outcome, delay, reason, duration_ms)

    def _close(self) -> None:
        for close in (self.transport.close, self.queue.close, self.store.dispose, self.db.dispose):
            try:
                close()
            except Exception:
                log.debug("closing failed", exc_info=True)
