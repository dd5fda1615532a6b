"""RateLimiter: the sliding window on a fake clock, then real processes against a real SMTP server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from herald.config import RateLimit, load_settings
from herald.mail import RateLimiter

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limiter(path: Path, clock: FakeClock, count: int = 3, period: float = 10.0) -> RateLimiter:
    return RateLimiter(RateLimit(count, period), path, clock=clock, sleep=clock.sleep)


def test_count_sends_go_at_once_then_the_window_decides(tmp_path):
    clock = FakeClock()
    rl = limiter(tmp_path / "state", clock)

    assert [rl.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    clock.now += 4
    assert rl.try_acquire() == pytest.approx(6.0)  # the oldest send is 4 s old of 10
    assert rl.try_acquire() == pytest.approx(6.0)  # a refusal counts nothing
    clock.now += 6
    assert rl.try_acquire() == 0.0


def test_acquire_sleeps_the_computed_time_once(tmp_path):
    clock = FakeClock()
    rl = limiter(tmp_path / "state", clock, count=2, period=10.0)

    for _ in range(5):
        rl.acquire()

    assert clock.slept == [pytest.approx(10.0), pytest.approx(10.0)]
    assert clock.now == pytest.approx(1_000_020.0)


def test_waiters_reserve_their_times_in_order(tmp_path):
    # Three threads blocked at the same moment: each reserves the next free time and sleeps until then.
    clock = FakeClock()
    slept: list[float] = []
    rl = RateLimiter(RateLimit(2, 10.0), tmp_path / "state", clock=clock, sleep=slept.append)
    rl.acquire()
    rl.acquire()

    for _ in range(3):
        rl.acquire()

    assert slept == [pytest.approx(10.0), pytest.approx(10.0), pytest.approx(20.0)]
    assert rl.try_acquire() == pytest.approx(20.0)  # nothing free before the last reservation


def test_processes_share_the_window_through_the_file(tmp_path):
    clock = FakeClock()
    one, two = limiter(tmp_path / "state", clock), limiter(tmp_path / "state", clock)

    assert one.try_acquire() == 0.0
    assert two.try_acquire() == 0.0
    assert one.try_acquire() == 0.0
    assert two.try_acquire() > 0  # the file holds three sends, whoever made them


def test_a_file_for_another_limit_or_garbage_starts_afresh(tmp_path):
    clock = FakeClock()
    path = tmp_path / "state"
    old = limiter(path, clock, count=1)
    assert old.try_acquire() == 0.0
    assert old.try_acquire() > 0

    assert limiter(path, clock, count=2).try_acquire() == 0.0
    path.write_bytes(b"not a rate-limit file")
    assert limiter(path, clock, count=1).try_acquire() == 0.0


def test_a_ring_from_an_earlier_boot_is_dropped(tmp_path, monkeypatch):
    clock = FakeClock()
    limiter(tmp_path / "state", clock, count=1).try_acquire()
    monkeypatch.setattr("herald.mail.ratelimit._boot_id", lambda: b"another boot....")
    clock.now = 5.0  # the monotonic clock started again

    assert limiter(tmp_path / "state", clock, count=1).try_acquire() == 0.0


def test_for_settings(tmp_path):
    none = load_settings(env={"HERALD_DATA_DIR": str(tmp_path)})
    some = load_settings(env={"HERALD_DATA_DIR": str(tmp_path), "HERALD_SMTP_RATE_LIMIT": "30/min"})

    assert RateLimiter.for_settings(none) is None
    rl = RateLimiter.for_settings(some)
    assert rl is not None and rl.limit == RateLimit(30, 60.0)
    assert str(tmp_path) in repr(rl)


def test_bad_limit_is_refused(tmp_path):
    with pytest.raises(ValueError):
        RateLimiter(RateLimit(0, 1.0), tmp_path / "state")


def test_three_processes_never_exceed_the_limit_at_the_server(make_smtp_server, tmp_path):
    smtp_server = make_smtp_server()
    count, period, per_process = 3, 0.6, 4
    state = tmp_path / "rate.state"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.mail.rate_sender", smtp_server.host, str(smtp_server.port),
             str(state), str(count), str(period), str(per_process), f"p{n}"],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for n in range(3)
    ]  # fmt: skip
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        started = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.wait(timeout=30) == 0
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    total = 3 * per_process
    assert len(smtp_server.wait_for(total)) == total
    # The relay's own count: no window of ``period`` saw more than ``count`` messages. (Some slack for a
    # loaded machine: the limiter spaces the sends, the server timestamps them a moment later. Without
    # the limiter all 12 would arrive within a few milliseconds.)
    assert smtp_server.most_in_window(period - 0.15) <= count
    # And the limiter really spaced them: 12 sends at 3 per 0.6 s need 3 more windows after the first.
    assert elapsed >= (total / count - 1) * period - 0.15
