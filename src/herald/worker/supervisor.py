"""``herald workers``: keep the worker processes alive and the outbox flowing.

The supervisor

- keeps exactly :func:`workers_wanted` ``herald worker --id i`` subprocesses running, restarting one that
  exits with a backoff that grows while it keeps crashing (0.5 s doubling to 30 s, reset after a minute
  of good health);
- when one of its workers dies (SIGKILL, a crash), hands that worker's claimed jobs and outbox locks back
  at once (``Queue.release`` of its consumer, ``release_holders`` of its pid), so its recipients go out
  within seconds rather than after ``lease_seconds``; the fencing token makes this safe even if the
  "dead" worker was only frozen. The lease stays as the fallback for a host that vanished;
- every second returns the jobs of dead workers to the queue (``reclaim_stale``; claims do it too, this
  covers a pool that shrank to nothing) and runs the outbox relay (:mod:`herald.worker.relay`) — if it
  leads: of all the supervisors of a deployment (one per host), the one holding the ``relay`` leader lease
  runs it (:mod:`herald.worker.leader`); another takes over when it stops (at once) or vanishes (after
  ``lease_seconds``);
- beats a heartbeat of its own (with how many workers it wants and has) next to the workers' ones;
- on SIGTERM or SIGINT passes SIGTERM on, waits ``worker_grace_seconds`` (plus a margin) for the workers
  to finish their jobs, kills any straggler, and exits 0.

How many workers: ``nb_backend_workers`` when ``async_emails`` names at least one project. When every
project is inline it runs at most one, a recovery worker: inline deliveries that hit a 4xx, and inline
requests that crashed before delivering, are finished through the queue by it. With
``nb_backend_workers = 0`` no worker and no relay run (nothing is delivered asynchronously; ``herald check``
sees the rows waiting) and a warning says so at start.

``herald relay`` runs the same loop without children, for workers managed by systemd.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from sqlalchemy import select

from herald.config import Settings
from herald.outbox import lock
from herald.queue import Queue, QueueError, make_queue
from herald.tracker.db import Database
from herald.tracker.models import WorkerHeartbeat, utcnow
from herald.worker.heartbeat import Heartbeat, forget, process_name
from herald.worker.leader import RELAY, Leadership
from herald.worker.relay import Relay
from herald.worker.sdnotify import Notifier

__all__ = ["Supervisor", "describe_exit", "workers_wanted"]

log = logging.getLogger("herald.supervisor")

TICK_SECONDS = 0.2
MAINTENANCE_SECONDS = 1.0
RESTART_BASE_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
#: A worker that ran this long before exiting is not "crashing": its next restart is immediate-ish.
HEALTHY_AFTER_SECONDS = 60.0
#: Beyond the grace period, how long SIGTERMed workers get before SIGKILL.
KILL_MARGIN_SECONDS = 5.0


def workers_wanted(settings: Settings) -> int:
    """How many workers the supervisor keeps (see the module docstring)."""
    if settings.async_emails.enabled:
        return settings.nb_backend_workers
    return min(1, settings.nb_backend_workers)


@dataclass
class _Slot:
    worker_id: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    start_at: float = 0.0


class Supervisor:
    """The worker pool of one machine; ``run()`` blocks until SIGTERM/SIGINT and returns the exit code.

    ``command`` is how to run herald (``[python, -m, herald, --config, X]``); ``spawn=False`` runs only the
    relay and the reclaimer (``herald relay``). With ``parent_pid`` it stops (cleanly) when that process,
    e.g. ``herald up``, is gone.
    """

    def __init__(
        self,
        settings: Settings,
        command: Sequence[str],
        *,
        spawn: bool = True,
        db: Database | None = None,
        queue: Queue | None = None,
        parent_pid: int | None = None,
        up_restarts: int = 0,
    ) -> None:
        self.settings = settings
        #: How many times ``herald up`` had to restart the supervisor before this one (in its heartbeat).
        self.up_restarts = up_restarts
        #: Wall-clock time of the main loop's last turn (in its heartbeat: a stuck loop shows).
        self.loop_at = time.time()
        self.command = list(command)
        self.spawn = spawn
        self.wanted = workers_wanted(settings) if spawn else 0
        self.relay_enabled = not spawn or self.wanted > 0
        self.db = db or Database(settings.database_url)
        self.queue = queue or make_queue(settings)
        self.relay = Relay(self.db, self.queue, settings)
        self.host = settings.node_name
        self.name = process_name("supervisor" if spawn else "relay", self.host)
        self.leadership = Leadership(self.db, RELAY, f"{self.name}:{os.getpid()}", settings.lease_seconds)
        self.slots = [_Slot(i) for i in range(1, self.wanted + 1)]
        self.restarts = 0
        self._stop = threading.Event()
        self._queue_failing = False
        self._parent_pid = parent_pid

    # --- signals --------------------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            if not self._stop.is_set():
                log.info("supervisor received %s: stopping the workers", signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # --- the loop -------------------------------------------------------------------------------------

    def run(self) -> int:
        self._announce()
        self._warn_if_name_taken()
        self._forget_surplus()
        heartbeat = Heartbeat(self.db, self.name, "supervisor", self._info, host=self.host)
        heartbeat.start()
        systemd = Notifier()
        systemd.ready()
        next_maintenance = 0.0
        try:
            while not self._stop.is_set():
                if self._parent_pid is not None and os.getppid() != self._parent_pid:
                    log.warning("the process that started the supervisor is gone; stopping")
                    break
                now = time.monotonic()
                self.loop_at = time.time()
                systemd.watchdog()  # a loop that stops turning gets this process restarted (WatchdogSec)
                for slot in self.slots:
                    self._tend(slot, now)
                if now >= next_maintenance:
                    self._maintain()
                    next_maintenance = now + MAINTENANCE_SECONDS
                self._stop.wait(TICK_SECONDS)
        finally:
            systemd.stopping()
            self._shutdown()
            heartbeat.stop()
            for close in (self.queue.close, self.db.dispose):
                try:
                    close()
                except Exception:
                    log.debug("closing failed", exc_info=True)
        log.info("supervisor stopped")
        return 0

    def _announce(self) -> None:
        s = self.settings
        self._warn_about_redis()
        if not self.spawn:
            log.info(
                "relay started pid=%d queue=%s (workers are managed elsewhere)", os.getpid(), s.queue_backend
            )
            return
        log.info(
            "supervisor started pid=%d workers=%d async_emails=%s queue=%s",
            os.getpid(),
            self.wanted,
            s.async_emails,
            s.queue_backend,
        )
        if self.wanted == 0:
            log.warning(
                "nb_backend_workers = 0: no worker runs, so nothing is delivered asynchronously; "
                "notifications of async projects stay queued (herald check reports them) until workers run"
            )
        elif not s.async_emails.enabled:
            log.info(
                "async_emails is false: one recovery worker finishes inline notifications that must be "
                "retried or whose request died before delivering"
            )

    def _warn_about_redis(self) -> None:
        """At start, the same Redis hardening warnings as ``herald doctor`` (weak password, no AOF...)."""
        if self.settings.queue_backend != "redis":
            return
        from herald.queue.health import redis_health
        from herald.queue.redis_client import connect

        client = connect(self.settings)
        try:
            for warning in redis_health(client):
                log.warning("redis: %s", warning)
        except QueueError as exc:
            log.warning("redis: cannot check its configuration yet: %s", exc)
        finally:
            client.close()

    def _info(self) -> dict[str, Any]:
        alive = sum(1 for slot in self.slots if slot.process is not None and slot.process.poll() is None)
        return {
            "state": "stopping" if self._stop.is_set() else "running",
            "workers_wanted": self.wanted,
            "workers_alive": alive,
            "restarts": self.restarts,
            "relay": self.relay_enabled,
            "relay_leader": self.leadership.leading,
            "pids": [slot.process.pid for slot in self.slots if slot.process is not None],
            "up_restarts": self.up_restarts,
            "loop_at": round(self.loop_at, 3),
        }

    def _warn_if_name_taken(self) -> None:
        """Two hosts with one ``node_name`` (containers sharing a hostname) would hand back each other's jobs:
        say so if a live process of another pid already beats under this supervisor's name."""
        try:
            with self.db.session() as session:
                row = session.get(WorkerHeartbeat, self.name)
                taken = row is not None and row.expires_at > utcnow() and row.pid != os.getpid()
                pid = row.pid if row is not None else 0
        except Exception as exc:
            log.debug("could not read the heartbeat of %s: %s", self.name, exc)
            return
        if taken:
            log.warning(
                "another process (pid %d) beats as %s: if it runs on another host, give each host its own "
                "node_name (it defaults to the hostname, which containers may share)",
                pid,
                self.name,
            )

    def _forget_surplus(self) -> None:
        """Heartbeats of this host's workers beyond the wanted count (it was lowered) are not deaths."""
        prefix = process_name("worker-", self.host)
        try:
            rows = [n for n in _heartbeat_names(self.db) if n.startswith(prefix)]
            surplus = [
                n for n in rows if not n[len(prefix) :].isdigit() or int(n[len(prefix) :]) > self.wanted
            ]
            forget(self.db, surplus)
        except Exception as exc:
            log.warning("could not tidy worker heartbeats: %s", exc)

    def _tend(self, slot: _Slot, now: float) -> None:
        process = slot.process
        if process is not None:
            code = process.poll()
            if code is None:
                return
            slot.process = None
            ran = now - slot.started
            slot.failures = 0 if ran >= HEALTHY_AFTER_SECONDS else slot.failures + 1
            delay = min(RESTART_MAX_SECONDS, RESTART_BASE_SECONDS * 2 ** max(0, slot.failures - 1))
            slot.start_at = now + delay
            log.warning(
                "worker-%d (pid %d) exited with %s after %.1fs; restarting in %.1fs",
                slot.worker_id,
                process.pid,
                describe_exit(code),
                ran,
                delay,
            )
            self.restarts += 1
            self._hand_back(slot.worker_id, process.pid)
            return
        if now >= slot.start_at and not self._stop.is_set():
            slot.process = subprocess.Popen(
                [*self.command, "worker", "--id", str(slot.worker_id), "--supervised"]
            )
            slot.started = now
            log.info("worker-%d started pid=%d", slot.worker_id, slot.process.pid)

    def _hand_back(self, worker_id: int, pid: int) -> None:
        """A worker died: its jobs and locks go to the live workers now, not after their leases."""
        consumer = process_name(f"worker-{worker_id}", self.host)
        jobs = locks = 0
        # Locks first: a live worker may claim a handed-back job within a millisecond, and must not find its
        # changeset still locked by the dead one (it would look again only after that lease).
        try:
            with self.db.write() as conn:
                locks = lock.release_holders(conn, f"{consumer}:{pid}:", utcnow())
        except Exception as exc:
            log.warning("could not release the notification locks of worker-%d: %s", worker_id, exc)
        try:
            jobs = self.queue.release(consumer)
        except QueueError as exc:  # the lease is the fallback
            log.warning("could not hand back the jobs of worker-%d: %s", worker_id, exc)
        if jobs or locks:
            log.warning(
                "handed back %d job(s) and %d notification lock(s) of worker-%d (pid %d) to the live workers",
                jobs,
                locks,
                worker_id,
                pid,
            )

    def _maintain(self) -> None:
        # The lease first, whatever the queue does: a leader that cannot reach Redis keeps leading.
        leading = self.relay_enabled and self.leadership.tick()
        try:
            reclaimed = self.queue.reclaim_stale()
            if reclaimed:
                log.warning("returned %d job(s) of dead or stalled workers to the queue", reclaimed)
            if leading:
                self.relay.run_once(self.leadership.guard)
        except QueueError as exc:
            if not exc.transient:
                log.error("relay: %s", exc)
            elif not self._queue_failing:
                log.warning(
                    "relay paused: queue unavailable (%s); nothing is lost, rows wait in the outbox", exc
                )
                self._queue_failing = True
            return
        except Exception:
            log.exception("relay run failed")
            return
        if self._queue_failing:
            log.info("relay resumed: queue reachable again")
            self._queue_failing = False

    def _shutdown(self) -> None:
        self.leadership.resign()  # first: another host's supervisor takes the relay over at its next look
        running = [s for s in self.slots if s.process is not None and s.process.poll() is None]
        for slot in running:
            assert slot.process is not None
            with contextlib.suppress(ProcessLookupError):
                slot.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.worker_grace_seconds + KILL_MARGIN_SECONDS
        for slot in self.slots:
            process = slot.process
            if process is None:
                continue
            try:
                code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker-%d (pid %d) did not stop in time; killing it", slot.worker_id, process.pid)
                process.kill()
                code = process.wait()
            log.info("worker-%d (pid %d) exited with %s", slot.worker_id, process.pid, describe_exit(code))
            slot.process = None


def _heartbeat_names(db: Database) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(WorkerHeartbeat.name).where(WorkerHeartbeat.kind == "worker")))


def describe_exit(code: int) -> str:
    """How a child process ended, for the log: ``code 3`` or ``signal SIGKILL``."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
