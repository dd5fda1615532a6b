"""Cross-cutting behaviour around each job, as hooks rather than flags in the loop (Dramatiq's middleware).

A :class:`Hook` has a no-op method per event. :class:`Hooks` calls ``worker_started`` and ``job_received``
in order and ``job_settled`` and ``worker_stopping`` in reverse, so a hook that wraps a job (a timer, a
heartbeat state) unwinds in the opposite order to its set-up. A failing hook is logged and skipped: it
must never take a worker down.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from herald.delivery import DeliveryOutcome, Verdict, count_sends
from herald.outbox import stats
from herald.queue import Job
from herald.tracker.db import Database
from herald.worker.heartbeat import Heartbeat

if TYPE_CHECKING:
    from herald.worker.loop import Worker

__all__ = ["HeartbeatHook", "Hook", "Hooks", "JobResult", "LogHook", "MetricsHook"]

log = logging.getLogger("herald.worker")


@dataclass(frozen=True)
class JobResult:
    """How a job was settled: ``ack``, ``retry`` (after ``delay``) or ``dead``."""

    job: Job
    action: str
    outcome: DeliveryOutcome | None
    delay: float
    reason: str
    duration_ms: float


class Hook:
    """Override the events you need; every method is a no-op here."""

    def worker_started(self, worker: Worker) -> None:
        pass

    def worker_stopping(self, worker: Worker) -> None:
        pass

    def job_received(self, worker: Worker, job: Job) -> None:
        pass

    def job_settled(self, worker: Worker, result: JobResult) -> None:
        pass


class Hooks:
    """An ordered list of hooks, called as described in the module docstring."""

    def __init__(self, hooks: list[Hook]) -> None:
        self._hooks = list(hooks)

    def _call(self, name: str, hooks: list[Hook], *args: Any) -> None:
        for hook in hooks:
            try:
                getattr(hook, name)(*args)
            except Exception:
                log.exception("hook %s.%s failed", type(hook).__name__, name)

    def worker_started(self, worker: Worker) -> None:
        self._call("worker_started", self._hooks, worker)

    def job_received(self, worker: Worker, job: Job) -> None:
        self._call("job_received", self._hooks, worker, job)

    def job_settled(self, worker: Worker, result: JobResult) -> None:
        self._call("job_settled", self._hooks[::-1], worker, result)

    def worker_stopping(self, worker: Worker) -> None:
        self._call("worker_stopping", self._hooks[::-1], worker)


class LogHook(Hook):
    """The ``worker.log`` lines of a job's life: received, then processed, retried or dead-lettered."""

    def worker_started(self, worker: Worker) -> None:
        s = worker.settings
        log.info(
            "%s started pid=%d queue=%s concurrency=%d connections=%d lease=%.1fs grace=%.1fs "
            "async_emails=%s",
            worker.name,
            worker.pid,
            s.queue_backend,
            worker.concurrency,
            worker.connections,
            s.lease_seconds,
            s.worker_grace_seconds,
            s.async_emails,
        )

    def job_received(self, worker: Worker, job: Job) -> None:
        log.info(
            "%s job received job_id=%s changeset_id=%d attempt=%d",
            worker.name,
            job.id,
            job.changeset_id,
            job.attempts,
        )

    def job_settled(self, worker: Worker, result: JobResult) -> None:
        job, outcome = result.job, result.outcome
        verdict = outcome.verdict.value if outcome is not None else "error"
        counts = ""
        if outcome is not None and outcome.recipients:
            counts = f" sent={outcome.sent} failed={outcome.failed} retrying={outcome.retrying}"
        if result.action == "ack":
            log.info(
                "%s job processed job_id=%s changeset_id=%d attempt=%d outcome=%s%s duration_ms=%.1f",
                worker.name,
                job.id,
                job.changeset_id,
                job.attempts,
                verdict,
                counts,
                result.duration_ms,
            )
        elif result.action == "retry":
            log.info(
                "%s job retry job_id=%s changeset_id=%d attempt=%d outcome=%s%s delay=%.2fs "
                "duration_ms=%.1f reason=%r",
                worker.name,
                job.id,
                job.changeset_id,
                job.attempts,
                verdict,
                counts,
                result.delay,
                result.duration_ms,
                result.reason,
            )
        else:
            log.error(
                "%s job dead job_id=%s changeset_id=%d attempt=%d reason=%r",
                worker.name,
                job.id,
                job.changeset_id,
                job.attempts,
                result.reason,
            )

    def worker_stopping(self, worker: Worker) -> None:
        log.info("%s stopped after %d job(s)", worker.name, worker.jobs_done)


class HeartbeatHook(Hook):
    """Keeps the worker's heartbeat row (see :mod:`herald.worker.heartbeat`) with what it is doing.

    The ``info`` JSON is a contract read by ``herald check``, the metrics and the admin console (readers
    tolerate missing keys)::

        {"state": "idle" | "busy" | "relay_down" | "stopping", "slots": int, "busy": int,
         "jobs": [{"job_id": str, "changeset_id": int, "since": unix_ts}],   # oldest first, at most 50
         "relay": {"up": bool, "since": unix_ts, "last_error": str | None},
         "done": int, "failed": int}

    ``since`` of a job is when this worker received it; ``relay.since`` when the relay gate last opened or
    closed (the worker's start if it never did); ``failed`` counts jobs settled other than by an ack.
    Deliveries run concurrently, so the jobs in hand are kept under a lock.
    """

    MAX_JOBS = 50

    def __init__(self, db: Database) -> None:
        self.db = db
        self._beat: Heartbeat | None = None
        self._lock = threading.Lock()
        self._busy: dict[str, tuple[int, float]] = {}  # job id -> (changeset id, since)
        self._worker: Worker | None = None
        self._failed = 0

    def _info(self) -> dict[str, Any]:
        with self._lock:
            busy = sorted(self._busy.items(), key=lambda item: item[1][1])
            failed = self._failed
        worker = self._worker
        jobs = [
            {"job_id": job_id, "changeset_id": cs, "since": round(since, 3)} for job_id, (cs, since) in busy
        ]
        info: dict[str, Any] = {
            "state": "busy" if busy else "idle",
            "slots": 0,
            "busy": len(busy),
            "jobs": jobs[: self.MAX_JOBS],
            "relay": {"up": True, "since": None, "last_error": None},
            "done": 0,
            "failed": failed,
        }
        if worker is not None:
            gate = worker.gate
            info.update(
                slots=worker.concurrency,
                done=worker.jobs_done - failed,
                relay={"up": gate.is_open, "since": round(gate.changed_at, 3), "last_error": gate.last_error},
                connections=worker.connections,
                pid=worker.pid,
            )
            if worker.stopping:
                info["state"] = "stopping"
            elif not gate.is_open:
                info["state"] = "relay_down"
        return info

    def worker_started(self, worker: Worker) -> None:
        self._worker = worker
        self._beat = Heartbeat(self.db, worker.consumer, "worker", self._info, host=worker.settings.node_name)
        self._beat.start()

    def job_received(self, worker: Worker, job: Job) -> None:
        with self._lock:
            was_idle = not self._busy
            self._busy[job.id] = (job.changeset_id, time.time())
        if was_idle and self._beat is not None:
            # Publish "busy" now, not up to a beat later: a worker frozen on its first job is then seen
            # holding it. A busy worker takes jobs without extra beats.
            self._beat.poke()

    def job_settled(self, worker: Worker, result: JobResult) -> None:
        with self._lock:
            self._busy.pop(result.job.id, None)
            if result.action != "ack":
                self._failed += 1

    def worker_stopping(self, worker: Worker) -> None:
        if self._beat is not None:
            self._beat.stop()


class MetricsHook(Hook):
    """Counts every job and every send of this process (:mod:`herald.outbox.stats`): a few dictionary
    updates under a lock on the job's path; a background thread adds them to the database totals once a
    second, and once more when the worker stops."""

    def __init__(self, db: Database, *, interval: float = stats.FLUSH_SECONDS) -> None:
        self.writer = stats.StatsWriter(db, interval=interval)
        self.counts = self.writer.counts

    def worker_started(self, worker: Worker) -> None:
        self.writer.start()

    def job_settled(self, worker: Worker, result: JobResult) -> None:
        self.counts.inc(stats.JOBS, {"outcome": job_outcome(result)})
        self.counts.observe(stats.JOB_DURATION, [result.duration_ms / 1000])
        if result.outcome is not None:
            count_sends(self.counts, result.outcome)

    def worker_stopping(self, worker: Worker) -> None:
        self.writer.stop()

    def flush(self) -> None:
        self.writer.flush()


def job_outcome(result: JobResult) -> str:
    """The ``outcome`` label of :data:`herald.outbox.stats.JOBS` for a settled job."""
    if result.action == "ack":
        return "done"
    if result.action == "dead":
        return "dead"
    if result.outcome is not None and result.outcome.verdict is Verdict.BUSY:
        return "busy"
    return "retry"
