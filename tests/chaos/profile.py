"""How hard the chaos suite pushes: a short profile (CI, the default), a long one (``HERALD_CHAOS=long``).

The seed (``HERALD_TEST_SEED``, a fixed default so CI runs are repeatable) draws who each change notifies,
what it changes, which relay replies are refused, which worker is hit, when each fault comes and how long
an outage lasts. Every run prints it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

#: Fault kinds, in the order the summary prints them.
WORKER_SIGKILL = "worker_sigkill"  # SIGKILL of a worker process mid-run (the supervisor restarts it)
WORKER_SIGSTOP = "worker_sigstop"  # SIGSTOP of a worker past its lease, then SIGCONT (fenced off)
REDIS_SIGKILL_AOF = "redis_sigkill_aof"  # SIGKILL of redis-server, restarted from its append-only file
REDIS_SIGKILL_EMPTY = "redis_sigkill_empty"  # SIGKILL, restarted with nothing (as without persistence)
RELAY_DOWN = "relay_down"  # the SMTP server stops listening and drops its connections for a while
FRONTEND_SIGKILL = "frontend_sigkill"  # SIGKILL of `herald serve` under load, then a restart

KINDS = (WORKER_SIGKILL, WORKER_SIGSTOP, REDIS_SIGKILL_AOF, REDIS_SIGKILL_EMPTY, RELAY_DOWN, FRONTEND_SIGKILL)
REDIS_KINDS = frozenset({REDIS_SIGKILL_AOF, REDIS_SIGKILL_EMPTY})


@dataclass(frozen=True)
class Profile:
    name: str
    changes: int  # changes submitted through the HTTP API (creations and updates)
    rate: float  # changes per second the load aims at
    clients: int  # concurrent API clients
    faults: dict[str, int] = field(default_factory=dict)  # how many of each kind
    relay_down_seconds: tuple[float, float] = (2.0, 4.0)
    redis_down_seconds: tuple[float, float] = (0.2, 1.5)
    smtp_delay: tuple[float, float] = (0.0, 0.01)  # every DATA answered after this long (a slow relay)
    smtp_flaky_rate: float = 0.03  # share of DATA answered 451 or 421 at random
    drain_timeout: float = 60.0  # after the last change and the last fault, every notification settled
    timeout: float = 170.0  # the whole test (pytest-timeout)

    def fault_counts(self, queue_backend: str) -> dict[str, int]:
        """The faults this run injects: Redis faults only where Redis is the queue."""
        return {
            kind: n
            for kind, n in self.faults.items()
            if n and (queue_backend == "redis" or kind not in REDIS_KINDS)
        }


SHORT = Profile(
    name="short",
    changes=150,
    rate=7.0,
    clients=3,
    faults={
        WORKER_SIGKILL: 2,
        WORKER_SIGSTOP: 1,
        REDIS_SIGKILL_AOF: 1,
        REDIS_SIGKILL_EMPTY: 1,
        RELAY_DOWN: 1,
        FRONTEND_SIGKILL: 1,
    },
)

LONG = Profile(
    name="long",
    changes=3000,
    rate=5.0,
    clients=4,
    faults={
        WORKER_SIGKILL: 16,
        WORKER_SIGSTOP: 8,
        REDIS_SIGKILL_AOF: 8,
        REDIS_SIGKILL_EMPTY: 6,
        RELAY_DOWN: 8,
        FRONTEND_SIGKILL: 8,
    },
    relay_down_seconds=(2.0, 10.0),
    redis_down_seconds=(0.2, 3.0),
    drain_timeout=300.0,
    timeout=3600.0,
)

PROFILES = {p.name: p for p in (SHORT, LONG)}


def current() -> Profile:
    name = os.environ.get("HERALD_CHAOS", "short").strip().lower() or "short"
    if name not in PROFILES:
        raise ValueError(f"HERALD_CHAOS={name!r}: expected one of {', '.join(PROFILES)}")
    return PROFILES[name]


SEED = int(os.environ.get("HERALD_TEST_SEED", "20261207"))
