"""Behind PgBouncer in transaction mode LISTEN does not work: the SQL queue finds out on start, says so once
in the log, polls instead, and still delivers; the tracker database works through it (no server-side
prepared statements there)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from herald.config import load_settings
from herald.queue import Job, make_queue, sql_wake
from herald.queue.sql_backend import SqlQueue
from tests.e2e.conftest import Stack
from tests.support.beds import Records

NO_LISTEN = "LISTEN/NOTIFY does not reach this process"


@pytest.fixture(autouse=True)
def _fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql_wake, "_warned_no_listen", False)


def _queue(url: str, tmp_path: Path) -> SqlQueue:
    env = {"HERALD_DATABASE_URL": url, "HERALD_QUEUE_BACKEND": "sql", "HERALD_DATA_DIR": str(tmp_path)}
    queue = make_queue(load_settings(env=env))
    assert isinstance(queue, SqlQueue)
    return queue


def test_sql_queue_polls_behind_pgbouncer_and_says_so_once(
    pgbouncer_url: str, tmp_path: Path, capture_log: Callable[[str], Records]
) -> None:
    records = capture_log("herald.queue")
    claimers = [_queue(pgbouncer_url, tmp_path) for _ in range(2)]
    pusher = _queue(pgbouncer_url, tmp_path)
    try:
        got: list[Job | None] = []
        ready = threading.Event()

        def claim(queue: SqlQueue) -> None:
            queue.claim("host-a:worker-1", timeout=0.01)  # starts the waker (and its probe)
            ready.set()
            got.append(queue.claim("host-a:worker-1", timeout=30))

        thread = threading.Thread(target=claim, args=(claimers[0],))
        thread.start()
        assert ready.wait(30)
        assert claimers[1].claim("host-b:worker-1", timeout=0.01) is None  # a second waker in this process
        pushed = Job.new(42)
        pusher.enqueue(pushed)
        thread.join(30)
        assert [j.id for j in got if j is not None] == [pushed.id]
        assert all(isinstance(q._waker, sql_wake.PgWaker) and q._waker.polling for q in claimers)
        assert sum(NO_LISTEN in m for m in records.messages()) == 1
    finally:
        for queue in (*claimers, pusher):
            queue.close()


def test_sql_queue_listens_on_postgresql_itself(
    pg_url: str, tmp_path: Path, capture_log: Callable[[str], Records]
) -> None:
    records = capture_log("herald.queue")
    queue = _queue(pg_url, tmp_path)
    try:
        assert queue.claim("host-a:worker-1", timeout=0.1) is None
        assert isinstance(queue._waker, sql_wake.PgWaker) and not queue._waker.polling
        assert not any(NO_LISTEN in m for m in records.messages())
    finally:
        queue.close()


def test_workers_deliver_through_pgbouncer(pgbouncer_url: str, make_stack: Callable[..., Stack]) -> None:
    """The whole system on the SQL queue through PgBouncer: every mail arrives, once."""
    stack = make_stack(pgbouncer_url, HERALD_QUEUE_BACKEND="sql", HERALD_NB_BACKEND_WORKERS="2")
    stack.start_workers()
    stack.burst(creations=5, updates=10)
    tally = stack.wait_all_delivered()
    print(tally.line("pgbouncer"))
    assert tally.lost == 0 and tally.duplicated == 0
    log = stack.log()
    assert 1 <= log.count(NO_LISTEN) <= 2  # once per worker process that claimed
