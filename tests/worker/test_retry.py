"""Backoff: exponential with full jitter, never above the cap, never negative."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from herald.config import Settings
from herald.worker.retry import RetryPolicy, backoff


@given(
    attempt=st.integers(min_value=-5, max_value=10_000),
    base=st.floats(min_value=0.01, max_value=3600),
    cap=st.floats(min_value=0.01, max_value=7 * 24 * 3600),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_stays_within_zero_and_the_exponential_ceiling_bounded_by_the_cap(attempt, base, cap, seed):
    delay = backoff(attempt, base=base, cap=cap, rng=random.Random(seed))
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 1) - 1, 60))
    assert 0.0 <= delay <= ceiling <= cap


def test_backoff_grows_exponentially_on_average_until_the_cap():
    rng = random.Random(1234)
    means = [
        sum(backoff(a, base=1.0, cap=100.0, rng=rng) for _ in range(2000)) / 2000 for a in (1, 2, 3, 4, 10)
    ]
    # Full jitter: the mean is half the ceiling (1, 2, 4, 8, then the cap of 100).
    for mean, expected in zip(means, (0.5, 1.0, 2.0, 4.0, 50.0), strict=True):
        assert abs(mean - expected) < expected * 0.1


def test_full_jitter_spreads_delays_over_the_whole_range():
    rng = random.Random(7)
    delays = [backoff(5, base=1.0, cap=600.0, rng=rng) for _ in range(1000)]
    assert min(delays) < 1.0 and max(delays) > 15.0  # ceiling 16


def test_policy_from_settings():
    policy = RetryPolicy.from_settings(
        Settings(retry_base_seconds=0.5, retry_max_seconds=3.0, delivery_max_attempts=4)
    )
    assert policy == RetryPolicy(0.5, 3.0, 4)
    assert not policy.exhausted(3) and policy.exhausted(4)
    assert all(0 <= policy.delay(50) <= 3.0 for _ in range(100))
