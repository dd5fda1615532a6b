"""``herald worker --id N``: claim jobs, run up to ``worker_concurrency`` deliveries at once, settle them.

Threads of one worker process, and why threads: the whole stack below is blocking I/O (SQLAlchemy, the SMTP
client, redis-py) that releases the GIL while it waits, and a slow relay is waiting, not computing. So

- the **claimer** (the main thread) blocks on the queue for as many jobs as there are free delivery slots —
  a job is picked up as soon as it is pushed — and stops claiming while the relay gate is closed;
- **delivery threads** (``worker_concurrency``) each run one delivery (:mod:`herald.delivery`);
- one **recorder** commits the outcomes of all of them as their sends complete, many per transaction
  (:mod:`herald.delivery.recorder`);
- **sender threads** (this process's share of ``smtp_max_connections``) send the recipients of those
  deliveries in parallel, each over a pooled connection to the relay, reused across jobs;
- one **lease keeper** renews the queue lease of every job in hand and every outbox lock, each in one round
  trip, every third of a lease (not a thread per job);
- the relay gate's **prober**, only while the relay is down.

A queue outage is met with backoff and reconnection, never a crash. On SIGTERM the worker stops claiming,
lets the deliveries in hand finish within ``worker_grace_seconds`` (past it they stop before their next
batch and their jobs go back to the queue, due at once), and exits 0.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from types import FrameType

from herald.config import DispatchMode, Settings
from herald.delivery import Deliverer, DeliveryOutcome, HeldLeases, RelayGate, RetryPolicy, Verdict, backoff
from herald.delivery.recorder import Recorder
from herald.delivery.run import Relay
from herald.mail import make_pool
from herald.outbox import lock
from herald.queue import Job, Queue, QueueError, make_queue
from herald.tracker.db import Database
from herald.tracker.models import utcnow
from herald.worker.heartbeat import process_name
from herald.worker.hooks import HeartbeatHook, Hook, Hooks, JobResult, LogHook, MetricsHook
from herald.worker.sdnotify import Notifier
from herald.worker.supervisor import workers_wanted

__all__ = ["CLAIM_TIMEOUT_SECONDS", "LeaseKeeper", "Worker", "connection_share"]

log = logging.getLogger("herald.worker")

#: Longest a claim blocks; also how fast an idle worker notices a stop request.
CLAIM_TIMEOUT_SECONDS = 1.0
#: Backoff while the queue is unreachable: from a tenth of a second up to this.
QUEUE_BACKOFF_MAX_SECONDS = 5.0


def connection_share(settings: Settings) -> int:
    """This worker process's share of ``smtp_max_connections`` (a per-host limit)."""
    return max(1, math.ceil(settings.smtp_max_connections / max(1, workers_wanted(settings))))


class LeaseKeeper:
    """Renews, every third of a lease, the queue lease of every job in hand (one round trip) and every
    outbox lock this process holds (one statement). A job whose queue lease was lost (it went to another
    worker) is flagged: its delivery stops before its next batch, and the fence keeps its writes out."""

    def __init__(self, queue: Queue, db: Database, leases: HeldLeases, lease_seconds: float) -> None:
        self.queue = queue
        self.db = db
        self.leases = leases
        self._jobs: dict[str, Job] = {}
        self.lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = max(0.05, lease_seconds / 3)
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def hold(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def release(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)
            self.lost.discard(job.id)

    def is_lost(self, job: Job) -> bool:
        return job.id in self.lost

    def renew_now(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        if jobs:
            try:
                for job in self.queue.extend_batch(jobs):
                    with self._lock:
                        if job.id not in self._jobs:  # settled meanwhile: its lease ended with it
                            continue
                        self.lost.add(job.id)
                    log.warning(
                        "lease of job_id=%s changeset_id=%d lost to another worker; stopping it",
                        job.id,
                        job.changeset_id,
                    )
            except QueueError as exc:  # unreachable for now: the outbox locks below still hold the changesets
                log.warning("could not extend the leases of %d job(s): %s", len(jobs), exc)
        held = self.leases.snapshot()
        if held:
            try:
                since = time.monotonic()
                with self.db.write() as conn:
                    renewed = lock.renew_all(conn, held, utcnow())
                self.leases.renewed(renewed, since)
            except Exception as exc:
                log.warning("could not renew %d notification lock(s): %s", len(held), exc)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.renew_now()


class Worker:
    """One worker process. ``run()`` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        worker_id: int,
        *,
        db: Database | None = None,
        queue: Queue | None = None,
        relay: Relay | None = None,
        hooks: list[Hook] | None = None,
        parent_pid: int | None = None,
        concurrency: int | None = None,
        connections: int | None = None,
    ) -> None:
        self.settings = settings
        self.name = f"worker-{worker_id}"
        #: The queue consumer and heartbeat name: unique across machines.
        self.consumer = process_name(self.name, settings.node_name)
        self.pid = os.getpid()
        #: Every outbox lock this process takes is named ``<holder_prefix><random>``, so the supervisor
        #: that sees this process die can release them all at once.
        self.holder_prefix = f"{self.consumer}:{self.pid}:"
        self.concurrency = concurrency or settings.worker_concurrency
        self.connections = connections or connection_share(settings)
        self.db = db or Database(settings.database_url)
        self.queue = queue or make_queue(settings)
        self.relay = relay if relay is not None else make_pool(settings, max_connections=self.connections)
        self.gate = RelayGate(self.relay.probe)
        self.leases = HeldLeases()
        self.keeper = LeaseKeeper(self.queue, self.db, self.leases, settings.lease_seconds)
        self._senders = ThreadPoolExecutor(self.connections, thread_name_prefix=f"{self.name}-send")
        self._runners = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"{self.name}-run")
        self.recorder = Recorder(self.db)
        self.deliverer = Deliverer(
            self.db,
            settings,
            self.relay,
            senders=self._senders,
            gate=self.gate,
            leases=self.leases,
            recorder=self.recorder,
        )
        self.policy = RetryPolicy.from_settings(settings)
        self.hooks = Hooks(
            hooks if hooks is not None else [LogHook(), HeartbeatHook(self.db), MetricsHook(self.db)]
        )
        self.jobs_done = 0
        self._slots = threading.Semaphore(self.concurrency)
        self._in_hand: dict[str, Job] = {}
        self._hand_lock = threading.Lock()
        self._parent_pid = parent_pid
        self._stop = threading.Event()
        self._stop_at = 0.0
        self._rng = random.Random()

    # --- stopping -------------------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        """Stop claiming; the deliveries in hand get ``worker_grace_seconds`` to finish. Signal-safe."""
        if not self._stop.is_set():
            self._stop_at = time.monotonic()
            self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            if not self._stop.is_set():
                log.info(
                    "%s received %s: finishing the jobs in hand, then exiting",
                    self.name,
                    signal.Signals(signum).name,
                )
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def in_hand(self) -> list[Job]:
        """The jobs being delivered right now."""
        with self._hand_lock:
            return list(self._in_hand.values())

    def _grace_over(self) -> bool:
        return self._stop.is_set() and time.monotonic() > self._stop_at + self.settings.worker_grace_seconds

    def _orphaned(self) -> bool:
        return self._parent_pid is not None and os.getppid() != self._parent_pid

    # --- the loop -------------------------------------------------------------------------------------

    def run(self) -> int:
        self.hooks.worker_started(self)
        self.keeper.start()
        systemd = Notifier()
        systemd.ready()
        outage = 0
        try:
            while not self._stop.is_set():
                systemd.watchdog()  # the claimer turns at least every CLAIM_TIMEOUT_SECONDS
                if self._orphaned():
                    log.warning("%s: its supervisor is gone; exiting", self.name)
                    break
                free = self._wait_for_slots()
                if not free:
                    continue
                if not self.gate.is_open:  # hold claiming too: the jobs wait in the queue, oldest first
                    self._give_back(free)
                    self.gate.wait_open(CLAIM_TIMEOUT_SECONDS)
                    continue
                try:
                    jobs = self.queue.claim_batch(self.consumer, free, CLAIM_TIMEOUT_SECONDS)
                except QueueError as exc:
                    self._give_back(free)
                    outage += 1
                    delay = backoff(outage, base=0.1, cap=QUEUE_BACKOFF_MAX_SECONDS, rng=self._rng) + 0.05
                    if outage == 1:
                        log.warning("%s: queue unavailable (%s); retrying with backoff", self.name, exc)
                    self._stop.wait(delay)
                    continue
                if outage:
                    log.info("%s: queue reachable again after %d failed claim(s)", self.name, outage)
                    outage = 0
                self._give_back(free - len(jobs))
                for job in jobs:
                    self._start(job)
        finally:
            self._drain()
            self.hooks.worker_stopping(self)
            self._close()
        return 0

    def _wait_for_slots(self) -> int:
        """Block (a little) for at least one free delivery slot; take every free one."""
        if not self._slots.acquire(timeout=CLAIM_TIMEOUT_SECONDS):
            return 0
        free = 1
        while free < self.concurrency and self._slots.acquire(blocking=False):
            free += 1
        return free

    def _give_back(self, slots: int) -> None:
        for _ in range(slots):
            self._slots.release()

    def _start(self, job: Job) -> None:
        with self._hand_lock:
            self._in_hand[job.id] = job
        self.keeper.hold(job)
        self._runners.submit(self._run_job, job)

    def _run_job(self, job: Job) -> None:
        try:
            self.process(job)
        finally:
            self.keeper.release(job)
            with self._hand_lock:
                self._in_hand.pop(job.id, None)
            self._slots.release()

    def _drain(self) -> None:
        """Wait for the deliveries in hand (they stop by themselves once the grace period is over)."""
        self._runners.shutdown(wait=True)
        self.gate.stop()
        self.keeper.stop()

    def process(self, job: Job) -> JobResult:
        """Deliver one claimed job and settle it with the queue."""
        started = time.perf_counter()
        self.hooks.job_received(self, job)
        outcome: DeliveryOutcome | None = None
        reason = ""
        try:
            outcome = self.deliverer.deliver(
                job.changeset_id,
                holder=f"{self.holder_prefix}{uuid.uuid4().hex[:12]}",
                mode=DispatchMode.ASYNC,
                job_id=job.id,
                queued_at=_when(job.enqueued_at),
                keep_going=lambda: not (self.keeper.is_lost(job) or self._grace_over()),
            )
        except Exception as exc:  # the database failed before the lock was taken: nothing changed
            reason = f"{type(exc).__name__}: {exc}"[:500]
            log.exception("%s: job_id=%s changeset_id=%d failed", self.name, job.id, job.changeset_id)
        result = self._settle(job, outcome, reason, started)
        with self._hand_lock:
            self.jobs_done += 1
        self.hooks.job_settled(self, result)
        return result

    def _settle(self, job: Job, outcome: DeliveryOutcome | None, reason: str, started: float) -> JobResult:
        if outcome is not None and outcome.finished:
            action, delay = "ack", 0.0
        elif outcome is not None and outcome.verdict is Verdict.BUSY:
            # Another process holds the changeset (a duplicate job). Look again once its lease would have
            # run out; if the holder dies meanwhile, this copy (or the relay) finishes the work.
            action, delay, reason = "retry", outcome.delay, outcome.reason
        elif outcome is not None:
            action, delay, reason = "retry", outcome.delay, outcome.reason or "retry"
        else:
            action, delay = "retry", self.policy.broken_run_delay(job.attempts, self._rng)
        try:
            if action == "ack":
                self.queue.ack(job)
            else:
                self.queue.retry(job, delay, reason)
        except Exception as exc:  # its lease runs out and another claim settles it: nothing is lost
            log.warning(
                "%s: could not %s job_id=%s changeset_id=%d: %s",
                self.name,
                action,
                job.id,
                job.changeset_id,
                exc,
            )
        duration_ms = (time.perf_counter() - started) * 1000
        return JobResult(job, action, outcome, delay, reason, duration_ms)

    def _close(self) -> None:
        self._senders.shutdown(wait=False, cancel_futures=True)
        self.recorder.close()
        for close in (self.relay.close, self.queue.close, self.db.dispose):
            try:
                close()
            except Exception:
                log.debug("closing failed", exc_info=True)


def _when(enqueued_at: float) -> datetime | None:
    try:
        return datetime.fromtimestamp(enqueued_at, UTC)
    except (OverflowError, OSError, ValueError):  # a garbage time must not break the delivery
        return None
