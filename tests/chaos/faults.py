"""The faults: one at a time at seeded moments of the load, each counted by kind."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.chaos import profile as P
from tests.chaos.load import Load
from tests.chaos.stack import ChaosStack
from tests.support.waiting import wait_until

#: How long a worker may take to come back: the supervisor's restart backoff grows to 30 s while a worker
#: keeps dying within a minute of its start (as the long profile makes them), and a loaded machine may take
#: as long again to start Python and herald.
RECOVERY_SECONDS = 120.0


@dataclass
class Faults:
    """Faults at seeded moments of the load, one at a time, each counted by kind.

    The mails in flight when a worker or the relay is hit (accepted by the relay and not recorded as
    sent; for a frozen worker, at the freeze and again at the wake) are the only ones that may come twice:
    ``suspects`` names them by (changeset, address), ``begun`` counts those caught mid-transaction (their
    changeset is not known yet)."""

    stack: ChaosStack
    profile: P.Profile
    seed: int
    injected: Counter[str] = field(default_factory=Counter)
    suspects: set[tuple[int, str]] = field(default_factory=set)
    begun: int = 0
    log: list[str] = field(default_factory=list)
    finished: float = 0.0
    load: Load | None = None

    def plan(self) -> list[tuple[float, str]]:
        """(seconds after the load started, kind), in time order: spread over the load's first 90 %."""
        rng = random.Random(self.seed)
        counts = self.profile.fault_counts(self.stack.queue_backend)
        kinds = [kind for kind, n in sorted(counts.items()) for _ in range(n)]
        rng.shuffle(kinds)
        duration = self.profile.changes / self.profile.rate
        slots = len(kinds)
        return [(duration * (0.05 + 0.85 * (i + rng.random()) / slots), kind) for i, kind in enumerate(kinds)]

    @property
    def in_flight(self) -> int:
        """Mails in flight at the faults: the most that may be sent twice."""
        return len(self.suspects) + self.begun

    def _caught(self, pairs: set[tuple[int, str]], begun: int) -> int:
        new = len(pairs - self.suspects) + begun
        self.suspects |= pairs
        self.begun += begun
        return new

    def run(self, load: Load) -> None:
        self.load = load
        rng = random.Random(self.seed + 1)
        for at, kind in self.plan():
            if (pause := load.started + at - time.monotonic()) > 0:
                time.sleep(pause)  # the moment of the fault, drawn from the seed
            began = time.monotonic()
            detail = getattr(self, kind)(rng)
            self.injected[kind] += 1
            line = f"t={began - load.started:6.1f}s {kind} {detail} ({time.monotonic() - began:.1f}s)"
            self.log.append(line)
            print(f"[chaos] {line}", flush=True)
        self.finished = time.monotonic()

    # --- one method per kind -------------------------------------------------------------------------

    def _victim(self, rng: random.Random) -> tuple[str, int]:
        live = wait_until(
            lambda: (w := self.stack.live_workers()) and w, "a live worker", timeout=RECOVERY_SECONDS
        )
        name = rng.choice(sorted(live))
        return name, live[name]

    def _workers_back(self, victim: int) -> None:
        wanted = int(self.stack.env["HERALD_NB_BACKEND_WORKERS"])
        wait_until(
            lambda: len(w := self.stack.live_workers()) == wanted and victim not in w.values(),
            "the supervisor to replace the worker",
            timeout=RECOVERY_SECONDS,
        )

    def worker_sigkill(self, rng: random.Random) -> str:
        name, pid = self._victim(rng)
        in_flight = self._caught(*self.stack.freeze_counting(pid))
        os.kill(pid, signal.SIGKILL)
        self._workers_back(pid)
        return f"{name} pid {pid}, {in_flight} in flight"

    def worker_sigstop(self, rng: random.Random) -> str:
        name, pid = self._victim(rng)
        in_flight = self._caught(*self.stack.freeze_counting(pid))
        frozen = 2 * self.stack.settings.lease_seconds + rng.uniform(0.5, 2.0)
        try:
            time.sleep(frozen)  # how long the fault lasts: past the lease, so the others take over
            # What the others could not record meanwhile (on SQLite the frozen one may hold the write lock).
            in_flight += self._caught(self.stack.in_flight_pairs(), self.stack.smtp.open_transactions)
        finally:
            os.kill(pid, signal.SIGCONT)
        lease = self.stack.settings.lease_seconds
        return f"{name} pid {pid} frozen {frozen + 1:.1f}s (lease {lease:g}s), {in_flight} in flight"

    def _redis_crash(self, rng: random.Random, *, fresh: bool) -> str:
        assert self.stack.redis is not None
        down = rng.uniform(*self.profile.redis_down_seconds)
        self.stack.redis.kill()
        time.sleep(down)  # how long the fault lasts
        self.stack.redis.start(fresh=fresh)
        return f"down {down:.1f}s" + (", back empty" if fresh else ", back from its AOF")

    def redis_sigkill_aof(self, rng: random.Random) -> str:
        return self._redis_crash(rng, fresh=False)

    def redis_sigkill_empty(self, rng: random.Random) -> str:
        return self._redis_crash(rng, fresh=True)

    def relay_down(self, rng: random.Random) -> str:
        in_flight = self._caught(self.stack.in_flight_pairs(), self.stack.smtp.open_transactions)
        down = rng.uniform(*self.profile.relay_down_seconds)
        self.stack.smtp.go_down()
        try:
            time.sleep(down)  # how long the outage lasts
            # Accepted as the connections dropped, the reply lost: the sender saw a failure.
            in_flight += self._caught(self.stack.in_flight_pairs(), 0)
        finally:
            self.stack.smtp.come_back()
        return f"down {down:.1f}s, {in_flight} in flight"

    def frontend_sigkill(self, rng: random.Random) -> str:
        # Aim at a request under way (committed and not yet answered, with luck): wait a little for one.
        assert self.load is not None
        aim = time.monotonic() + 2.0
        while self.load.busy == 0 and not self.load.done and time.monotonic() < aim:
            time.sleep(0.001)
        self.stack.frontend.kill()
        killed = time.monotonic()
        self.stack.frontend.start()
        return f"restarted, answering again after {time.monotonic() - killed:.1f}s"
