"""Database writes per mail, for sizing a shared PostgreSQL: rows written and transactions committed by the
whole system (front end, supervisor, workers, heartbeats) to deliver a burst of changes, read from
PostgreSQL's own counters (``pg_stat_database``) for the test's database. The figure goes to
docs/scaling.md; the bound asserted is loose (a regression that writes per recipient many times)."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import text

from tests.e2e.conftest import Stack

_COUNTERS = text(
    "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database "
    "WHERE datname = current_database()"
)


def _counters(stack: Stack) -> tuple[int, int]:
    """(transactions committed, rows written) so far, as the statistics system last flushed them."""
    with stack.db.engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        commits, inserted, updated, deleted = conn.execute(_COUNTERS).one()
    return int(commits), int(inserted + updated + deleted)


def _settled(stack: Stack) -> tuple[int, int]:
    # Backends flush their counters at most once a second (PostgreSQL 15): read until two reads agree.
    last = _counters(stack)
    while True:
        time.sleep(1.1)
        now = _counters(stack)
        if now[1] == last[1]:
            return now
        last = now


def test_database_writes_per_mail(pg_url: str, make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(pg_url, HERALD_NB_BACKEND_WORKERS="2")
    before = _settled(stack)
    supervisor = stack.start_workers()
    stack.burst(creations=10, updates=30)
    tally = stack.wait_all_delivered()
    assert stack.stop_workers(supervisor) == 0
    after = _settled(stack)
    commits, rows = after[0] - before[0], after[1] - before[1]
    changes, mails = len(stack.changesets), tally.expected
    print(
        f"database writes: changes={changes} mails={mails} rows={rows} ({rows / mails:.1f}/mail) "
        f"commits={commits} ({commits / mails:.2f}/mail), everything included (front end, heartbeats)"
    )
    assert tally.lost == 0
    assert rows / mails < 15
