"""What ``herald up`` does beside serving: keep its supervisor alive, and probe the SMTP relay at start.

The supervisor (``herald workers --supervised``) keeps the workers and runs the outbox relay. If it dies
(SIGKILL, the OOM killer, a crash) nothing else would notice: ``/healthz`` turns degraded and ``herald
check`` critical, but mail stops. So ``herald up`` watches it from a thread and starts a new one, logged
in ``herald.log`` (``supervisor (pid 4242) exited with signal SIGKILL after 812.3s; restarting it
(restart 1)``), with the same backoff as the supervisor gives its workers (0.5 s doubling to 30 s while it
keeps dying within a minute). The new supervisor is told how many restarts there were
(``--up-restarts N``) and publishes it in its heartbeat, which ``herald check`` reports for a while
(``supervisor-restarted``).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from herald.config import Settings
from herald.worker.supervisor import describe_exit

__all__ = ["SupervisorKeeper", "probe_smtp"]

log = logging.getLogger("herald.up")

RESTART_BASE_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
HEALTHY_AFTER_SECONDS = 60.0
POLL_SECONDS = 0.2


class SupervisorKeeper:
    """Starts the supervisor with ``start(restarts)`` and starts it again whenever it exits, until
    :meth:`stop`."""

    def __init__(self, start: Callable[[int], subprocess.Popen[bytes]], grace_seconds: float) -> None:
        self._start = start
        self._grace = grace_seconds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.restarts = 0
        self.process = start(0)
        self._started = time.monotonic()
        self._failures = 0
        self._thread = threading.Thread(target=self._watch, name="supervisor-keeper", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            with self._lock:
                code = self.process.poll()
                if code is None or self._stop.is_set():
                    continue
                ran = time.monotonic() - self._started
                self._failures = 0 if ran >= HEALTHY_AFTER_SECONDS else self._failures + 1
                delay = min(RESTART_MAX_SECONDS, RESTART_BASE_SECONDS * 2 ** max(0, self._failures - 1))
                self.restarts += 1
                log.error(
                    "supervisor (pid %d) exited with %s after %.1fs; restarting it in %.1fs (restart %d)",
                    self.process.pid,
                    describe_exit(code),
                    ran,
                    delay,
                    self.restarts,
                )
            if self._stop.wait(delay):
                return
            with self._lock:
                if self._stop.is_set():
                    return
                self.process = self._start(self.restarts)
                self._started = time.monotonic()
                log.info("supervisor restarted pid=%d", self.process.pid)

    def stop(self) -> None:
        """Stop watching, pass SIGTERM on and wait for the workers' grace period (then SIGKILL)."""
        self._stop.set()
        with self._lock:
            process = self.process
        self._thread.join(timeout=5)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self._grace + 5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def probe_smtp(settings: Settings) -> str | None:
    """Connect to the SMTP relay as a worker would (EHLO, STARTTLS, login); the reason it is unusable, or
    None when it works (or when mail goes to the built-in mailbox)."""
    if not settings.smtp_host:
        return None
    from herald.mail import make_pool

    pool = make_pool(settings, max_connections=1)
    try:
        pool.probe()
    except Exception as exc:
        return str(exc)[:300] or type(exc).__name__
    finally:
        pool.close()
    return None
