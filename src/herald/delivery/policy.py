"""The one retry policy: every "try again later" and "give up" of the delivery engine is decided here.

Which counter limits what (docs/architecture.md has the same table):

=======================  ==========================================  =========================================
what is retried          limited by                                  past the limit
=======================  ==========================================  =========================================
a recipient, after a     time since its first such failure:           ``failed``, with the last reply recorded
4xx / a send error       ``delivery_max_age`` (5 days, as postfix)
the relay itself (down,  nothing: no recipient is charged; workers    — (sending resumes when a probe passes)
refused login, 421)      hold and probe with backoff
a job claimed but never  claims since it was last settled:            dead letter (a poison job cannot loop)
settled (crash, hang)    ``job_max_attempts``
a delivery run that      nothing but the recipients' own clocks       —
broke (a bug, the DB)
=======================  ==========================================  =========================================

Backoff is exponential from ``retry_base_seconds`` to ``retry_max_seconds`` with "equal jitter" (half the
step fixed, half random): retries of many recipients that failed together spread out instead of coming back
in waves, and none is retried at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from herald.config import Settings

__all__ = ["RetryPolicy", "backoff", "format_age"]

# 2**60 times any sane base is far past every cap; a bigger exponent would only risk float overflow.
_MAX_EXPONENT = 60
#: Relay probes: the first after half a second, then doubling up to this, so that sending resumes within
#: a few seconds of the relay coming back.
PROBE_MIN_SECONDS = 0.5
PROBE_MAX_SECONDS = 4.0


def backoff(failures: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failure number ``failures`` (1 for the first): in
    ``[step / 2, step]`` where ``step = min(cap, base * 2 ** (failures - 1))``."""
    exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
    step = min(cap, base * 2.0**exponent)
    return step / 2 + (rng or random).uniform(0.0, step / 2)


def format_age(seconds: float) -> str:
    """``3d4h``, ``2h5m``, ``7m12s``, ``40s``: the age a delayed mail carries in X-Herald-Delayed."""
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{s}s"
    return f"{s}s"


@dataclass(frozen=True)
class RetryPolicy:
    """Built from ``retry_base_seconds``, ``retry_max_seconds``, ``delivery_max_age`` and
    ``job_max_attempts``."""

    base: float
    cap: float
    max_age: float
    job_max_attempts: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.retry_base_seconds,
            settings.retry_max_seconds,
            settings.delivery_max_age,
            settings.job_max_attempts,
        )

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The backoff after ``failures`` failures."""
        return backoff(failures, base=self.base, cap=self.cap, rng=rng)

    def next_try(
        self, failures: int, first_failed_at: datetime, now: datetime, rng: random.Random | None = None
    ) -> datetime | None:
        """When a recipient that failed transiently ``failures`` times, first at ``first_failed_at``, is
        tried next; None once it has been failing for ``delivery_max_age`` (it fails for good)."""
        if (now - first_failed_at).total_seconds() >= self.max_age:
            return None
        return now + timedelta(seconds=self.delay(failures, rng))

    def broken_run_delay(self, runs: int, rng: random.Random | None = None) -> float:
        """After a delivery run broke off (a bug, the database failing mid-way)."""
        return max(1.0, self.delay(max(2, runs), rng))

    def job_is_poison(self, claims: int) -> bool:
        """Whether a job claimed ``claims`` times without being settled must go to the dead letters."""
        return claims >= self.job_max_attempts

    @staticmethod
    def probe_delay(probes: int) -> float:
        """How long to wait before relay probe number ``probes`` (1 for the first)."""
        return min(PROBE_MAX_SECONDS, PROBE_MIN_SECONDS * 2.0 ** min(max(probes, 1) - 1, 10))
