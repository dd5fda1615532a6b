"""How long to wait before trying a recipient again: exponential backoff with full jitter, bounded.

Full jitter (a delay drawn uniformly between 0 and the exponential ceiling) spreads the retries of many
notifications that failed together, e.g. during an SMTP outage, instead of sending them back in waves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from herald.config import Settings

__all__ = ["RetryPolicy", "backoff"]

# 2**60 times any sane base is far past every cap; a bigger exponent would only risk float overflow.
_MAX_EXPONENT = 60


def backoff(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first failure).

    Uniform in ``[0, min(cap, base * 2 ** (attempt - 1))]``.
    """
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    ceiling = min(cap, base * 2.0**exponent)
    return (rng or random).uniform(0.0, ceiling)


@dataclass(frozen=True)
class RetryPolicy:
    """The per-recipient retry settings: ``retry_base_seconds``, ``retry_max_seconds``,
    ``delivery_max_attempts``."""

    base: float
    cap: float
    max_attempts: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.retry_base_seconds, settings.retry_max_seconds, settings.delivery_max_attempts)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The backoff after failed attempt ``attempt``."""
        return backoff(attempt, base=self.base, cap=self.cap, rng=rng)

    def exhausted(self, attempts: int) -> bool:
        """Whether a recipient tried ``attempts`` times has used up its attempts."""
        return attempts >= self.max_attempts
