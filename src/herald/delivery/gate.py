"""The relay gate: while the relay itself is unusable, a process holds all sending and probes it.

A relay that refuses connections, drops them, times out, fails the TLS handshake, refuses herald's login or
answers 421 is not any recipient's fault. Charging each recipient an attempt (and a place on its max-age
clock) for it is how a two-minute outage used to fail mail for good. Instead the first send that meets such
an error closes the gate: deliveries in this process stop sending and wait, the worker stops claiming, and
one thread probes the relay (connect, EHLO, login) with a backoff of 0.5 s doubling to 4 s. When a probe
passes the gate opens and everything resumes by itself, the oldest deliveries first (they were waiting
longest on the gate's condition, which wakes them in order).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from herald.delivery.policy import RetryPolicy

__all__ = ["RelayGate"]

log = logging.getLogger("herald.relay_gate")


class RelayGate:
    """Open while the relay works. ``probe()`` raises while the relay is unusable."""

    def __init__(self, probe: Callable[[], None], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe
        self._clock = clock
        self._cond = threading.Condition()
        self._open = True
        self._closed_at = 0.0
        self._reason = ""
        self._last_error: str | None = None
        #: Wall-clock time of the last change (closed or opened), for heartbeats; set at creation.
        self.changed_at = time.time()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.outages = 0

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def reason(self) -> str:
        """Why the gate is closed (the relay's last error), or ``""``."""
        return "" if self._open else self._reason

    @property
    def last_error(self) -> str | None:
        """The relay's most recent error (kept after the gate opens again), or None if it never failed."""
        return self._last_error

    def down_for(self) -> float:
        """Seconds since the gate closed; 0 while open."""
        return 0.0 if self._open else self._clock() - self._closed_at

    def report_down(self, reason: str) -> None:
        """A send met a relay-level error: close the gate (once) and start probing."""
        with self._cond:
            if not self._open or self._stopped:
                return
            self._open = False
            self._closed_at = self._clock()
            self.changed_at = time.time()
            self._reason = reason
            self._last_error = reason
            self.outages += 1
            log.warning(
                "relay unusable (%s): holding all sending and probing it; no recipient is charged", reason
            )
            self._thread = threading.Thread(target=self._run_probes, name="relay-probe", daemon=True)
            self._thread.start()

    def wait_open(self, timeout: float) -> bool:
        """Block until the gate is open or ``timeout`` passed; True if open."""
        with self._cond:
            return self._cond.wait_for(lambda: self._open or self._stopped, timeout) and self._open

    def stop(self) -> None:
        """Wake every waiter (the process is stopping); probing ends."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run_probes(self) -> None:
        probes = 0
        while True:
            probes += 1
            with self._cond:
                if self._cond.wait_for(lambda: self._stopped, RetryPolicy.probe_delay(probes)):
                    return
            try:
                self._probe()
            except Exception as exc:
                with self._cond:
                    self._reason = str(exc)[:300] or type(exc).__name__
                    self._last_error = self._reason
                if probes == 1 or probes % 30 == 0:
                    log.warning("relay still unusable after %d probe(s): %s", probes, self._reason)
                continue
            with self._cond:
                self._open = True
                self.changed_at = time.time()
                down = self._clock() - self._closed_at
                self._cond.notify_all()
            log.info("relay usable again after %.1fs (%d probe(s)); sending resumes", down, probes)
            return
