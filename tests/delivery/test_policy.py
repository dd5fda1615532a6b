"""The one retry policy: backoff with equal jitter, give-up by age, poison jobs, relay probes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from herald.config import Settings
from herald.delivery import RetryPolicy, backoff, format_age

T0 = datetime(2026, 12, 1, tzinfo=UTC)


@given(
    failures=st.integers(min_value=-5, max_value=10_000),
    base=st.floats(min_value=0.01, max_value=3600),
    cap=st.floats(min_value=0.01, max_value=7 * 24 * 3600),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_stays_between_half_the_step_and_the_step_bounded_by_the_cap(failures, base, cap, seed):
    delay = backoff(failures, base=base, cap=cap, rng=random.Random(seed))
    step = min(cap, base * 2.0 ** min(max(failures, 1) - 1, 60))
    assert step / 2 <= delay <= step <= cap


def test_backoff_grows_exponentially_on_average_until_the_cap():
    rng = random.Random(1234)
    means = [sum(backoff(a, base=1.0, cap=100.0, rng=rng) for _ in range(2000)) / 2000 for a in (1, 2, 3, 10)]
    for mean, expected in zip(means, (0.75, 1.5, 3.0, 75.0), strict=True):
        assert abs(mean - expected) < expected * 0.05


def test_a_recipient_is_retried_until_delivery_max_age_then_given_up():
    policy = RetryPolicy(base=2.0, cap=600.0, max_age=5 * 86400, job_max_attempts=10)
    first = T0
    assert policy.next_try(1, first, first) is not None
    late = first + timedelta(days=4, hours=23)
    nxt = policy.next_try(500, first, late, random.Random(1))
    assert nxt is not None and late + timedelta(seconds=300) <= nxt <= late + timedelta(seconds=600)
    assert policy.next_try(501, first, first + timedelta(days=5)) is None


def test_a_two_minute_outage_of_4xx_no_longer_fails_anybody():
    """herald 0.1 gave up after 8 attempts, about 118 s into an outage with these settings."""
    policy = RetryPolicy.from_settings(Settings())
    first, now, failures = T0, T0, 0
    rng = random.Random(3)
    while now - first < timedelta(minutes=30):
        failures += 1
        nxt = policy.next_try(failures, first, now, rng)
        assert nxt is not None, f"gave up after {failures} failures"
        now = nxt
    assert failures > 8


def test_poison_jobs_and_broken_runs():
    policy = RetryPolicy(base=1.0, cap=60.0, max_age=3600, job_max_attempts=3)
    assert not policy.job_is_poison(2) and policy.job_is_poison(3)
    assert 1.0 <= policy.broken_run_delay(1) <= 60.0


def test_relay_probes_start_fast_and_stay_within_seconds():
    delays = [RetryPolicy.probe_delay(n) for n in range(1, 20)]
    assert delays[0] == 0.5 and max(delays) <= 4.0 and delays == sorted(delays)


def test_policy_from_settings():
    settings = Settings(
        retry_base_seconds=0.5, retry_max_seconds=3.0, delivery_max_age=7200, job_max_attempts=4
    )
    assert RetryPolicy.from_settings(settings) == RetryPolicy(0.5, 3.0, 7200.0, 4)


def test_format_age():
    assert [format_age(s) for s in (0, 59, 61, 3600 * 2 + 300, 86400 * 3 + 3600 * 4)] == [
        "0s",
        "59s",
        "1m1s",
        "2h5m",
        "3d4h",
    ]
