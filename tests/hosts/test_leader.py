"""The relay's leader lease on SQLite and PostgreSQL: one leader, renewal, takeover after expiry, a clean
handover, and the fence that keeps a former leader's relay writes out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from herald.config import load_settings
from herald.ops.workers import relay_leader
from herald.queue import make_queue
from herald.tracker.db import Database
from herald.worker.leader import RELAY, Leadership
from herald.worker.relay import Relay

LEASE = 5.0


class Clock:
    """One fake time for every process of the test: wall clock and monotonic move together."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> datetime:
        return datetime(2026, 12, 7, tzinfo=UTC) + timedelta(seconds=self.t)

    def mono(self) -> float:
        return self.t


def lead(db: Database, clock: Clock, holder: str) -> Leadership:
    return Leadership(db, RELAY, holder, LEASE, clock=clock.now, monotonic=clock.mono)


def test_one_leader_renews_and_another_takes_over_after_the_lease(any_db: Database) -> None:
    clock = Clock()
    a, b = lead(any_db, clock, "host-a:supervisor:1"), lead(any_db, clock, "host-b:supervisor:2")
    assert a.tick() and not b.tick()
    first = a.fence
    for _ in range(10):  # renewals keep it, for far longer than one lease
        clock.t += 1.0
        assert a.tick() and not b.tick()
    assert a.fence == first
    # a is cut off: it beats no more; b takes over once the lease ran out, not before.
    clock.t += LEASE - 0.5
    assert not b.tick()
    clock.t += 1.0
    assert b.tick()
    assert b.fence == (first or 0) + 1
    # a is back: its renewal matches nothing (the fence moved), it stops leading and writes nothing.
    assert not a.leading  # its local deadline passed already
    assert not a.tick()
    with any_db.write() as conn:
        assert not a.guard(conn)
        assert b.guard(conn)
    leader = relay_leader(any_db, now=clock.now())
    assert leader is not None and leader.holder == "host-b:supervisor:2" and leader.live


def test_clean_stop_hands_over_at_once(any_db: Database) -> None:
    clock = Clock()
    a, b = lead(any_db, clock, "host-a:supervisor:1"), lead(any_db, clock, "host-b:supervisor:2")
    assert a.tick() and not b.tick()
    a.resign()
    assert not a.leading
    assert b.tick()  # same instant: no wait for the lease
    assert b.fence == 2


def test_stale_guard_keeps_the_relay_from_writing(any_db: Database, tmp_path: Path) -> None:
    url = any_db.engine.url.render_as_string(hide_password=False)
    settings = load_settings(env={"HERALD_DATABASE_URL": url, "HERALD_DATA_DIR": str(tmp_path)})

    clock = Clock()
    a, b = lead(any_db, clock, "host-a:relay:1"), lead(any_db, clock, "host-b:relay:2")
    assert a.tick()
    clock.t += LEASE + 1
    assert b.tick()
    queue = make_queue(settings)
    try:
        report = Relay(any_db, queue, settings).run_once(a.guard)
    finally:
        queue.close()
    assert report.fenced and report.pushed == 0
