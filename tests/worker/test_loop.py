"""The worker loop in-process (a thread) against a real redis-server, aiosmtpd and SQLite: claim, deliver,
settle; malformed jobs; queue outages; shutdown with a grace period; the lease keeper; heartbeats."""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from herald.config import DispatchMode
from herald.mail import make_transport
from herald.mail.transport import Receipt, Transport
from herald.outbox import NotificationState
from herald.queue import make_queue
from herald.queue.keys import JOB_FIELD, RedisKeys
from herald.worker.dispatch import build_dispatcher
from herald.worker.heartbeat import alive
from herald.worker.loop import Worker
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until as _wait_until
from tests.support.beds import Bed, message_ids, notification

WAIT = 10.0
wait_until = functools.partial(_wait_until, timeout=WAIT)


class Slow(Transport):
    """A real transport that takes its time per message (a slow SMTP server)."""

    def __init__(self, inner: Transport, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds

    def send(self, message: EmailMessage, sender: str, recipient: str) -> Receipt:
        time.sleep(self.seconds)
        return self.inner.send(message, sender, recipient)

    def close(self) -> None:
        self.inner.close()


@dataclasses.dataclass
class Pool:
    bed: Bed
    threads: list[tuple[Worker, threading.Thread, list[int]]]

    def start(self, worker_id: int = 1, transport: Transport | None = None, **overrides: object) -> Worker:
        settings = dataclasses.replace(self.bed.settings, **overrides)
        worker = Worker(settings, worker_id, transport=transport)
        codes: list[int] = []
        thread = threading.Thread(target=lambda: codes.append(worker.run()), daemon=True)
        thread.start()
        self.threads.append((worker, thread, codes))
        return worker

    def stop(self, worker: Worker) -> int:
        for w, thread, codes in self.threads:
            if w is worker:
                w.request_stop()
                thread.join(timeout=WAIT)
                assert not thread.is_alive()
                return codes[0]
        raise AssertionError("unknown worker")

    def push(self, mode: DispatchMode = DispatchMode.ASYNC) -> int:
        cs = self.bed.changeset(mode)
        dispatcher = build_dispatcher(self.bed.settings, self.bed.db)
        try:
            dispatcher.after_commit(cs, DispatchMode.ASYNC)
        finally:
            dispatcher.close()
        return cs

    def done(self, cs: int) -> bool:
        return notification(self.bed.db, cs).state is NotificationState.DONE


@pytest.fixture
def pool(redis_bed: Bed) -> Iterator[Pool]:
    p = Pool(redis_bed, [])
    yield p
    for worker, thread, _codes in p.threads:
        worker.request_stop()
        thread.join(timeout=WAIT)


def test_a_pushed_job_is_delivered_acked_and_logged(pool: Pool, capture_log):
    log = capture_log("herald.worker")
    worker = pool.start()
    cs = pool.push()
    pool.bed.server.wait_for(3)
    wait_until(lambda: pool.done(cs), "the notification to be done")
    assert pool.stop(worker) == 0
    with make_queue(pool.bed.settings) as q:
        stats = q.stats()
    assert (stats.depth, stats.in_flight, stats.delayed, stats.dead) == (0, 0, 0, 0)
    lines = log.messages()
    assert any(m.startswith("worker-1 started pid=") for m in lines)
    assert any("job received job_id=" in m and f"changeset_id={cs} attempt=1" in m for m in lines)
    processed = [m for m in lines if "job processed" in m]
    assert len(processed) == 1 and "outcome=done sent=3 failed=0 retrying=0 duration_ms=" in processed[0]
    assert lines[-1] == "worker-1 stopped after 1 job(s)"


def test_451_comes_back_as_a_delayed_retry_and_is_delivered_once(pool: Pool, capture_log):
    log = capture_log("herald.worker")
    pool.bed.server.script_data("451 4.4.1 later")
    pool.start()
    cs = pool.push()
    wait_until(lambda: pool.done(cs), "the retried notification to be done")
    ids = message_ids(pool.bed.server)
    assert len(ids) == len(set(ids)) == 3
    assert any("job retry" in m and "attempt=1" in m and "451 4.4.1 later" in m for m in log.messages())
    assert notification(pool.bed.db, cs).attempts == 2


def test_garbage_on_the_queue_is_dead_lettered_and_the_worker_carries_on(
    pool: Pool, redis_server: RedisServer
):
    pool.start()
    client = redis_server.client()
    client.xadd(RedisKeys(pool.bed.settings.redis_namespace).stream, {JOB_FIELD: b"\x80 not json"})
    client.close()
    cs = pool.push()
    wait_until(lambda: pool.done(cs), "the next job to be done")
    with make_queue(pool.bed.settings) as q:
        letters = q.dead_letters()
    assert len(letters) == 1 and "malformed job" in letters[0].reason


def test_a_queue_outage_is_waited_out_not_crashed_on(pool: Pool, redis_server: RedisServer, capture_log):
    log = capture_log("herald.worker")
    worker = pool.start()
    wait_until(lambda: alive(pool.bed.db, kind="worker"), "the worker to be up and claiming")
    redis_server.stop()
    wait_until(lambda: any("queue unavailable" in m for m in log.messages()), "the worker to notice")
    redis_server.start()
    cs = pool.push()
    wait_until(lambda: pool.done(cs), "delivery after the outage")
    assert any("queue reachable again" in m for m in log.messages())
    assert pool.stop(worker) == 0


def test_stop_finishes_the_job_in_hand_within_the_grace_period(pool: Pool):
    slow = Slow(make_transport(pool.bed.settings), 0.4)
    worker = pool.start(transport=slow, worker_grace_seconds=0.2)
    cs = pool.push()
    pool.bed.server.wait_for(1)
    started = time.monotonic()
    assert pool.stop(worker) == 0
    assert time.monotonic() - started < 2.0
    sent = len(pool.bed.server.messages)
    assert sent < 3  # the grace period ran out before the last recipient
    assert notification(pool.bed.db, cs).state is NotificationState.RETRYING
    pool.start(worker_id=2)
    wait_until(lambda: pool.done(cs), "another worker to finish the job")
    ids = message_ids(pool.bed.server)
    assert len(ids) == len(set(ids)) == 3


def test_the_lease_keeper_keeps_a_long_job_from_being_taken_for_a_dead_one(pool: Pool):
    # 3 s per job against a 2 s lease: only the keeper's renewals (every lease/3) keep the job. The lease
    # is not shorter because a loaded CI machine can delay a renewal by a few hundred milliseconds.
    slow = Slow(make_transport(pool.bed.settings), 1.0)
    pool.start(transport=slow, lease_seconds=2.0)
    pool.start(worker_id=2, lease_seconds=2.0)
    cs = pool.push()
    wait_until(lambda: pool.done(cs), "the slow job to be done")
    ids = message_ids(pool.bed.server)
    assert len(ids) == len(set(ids)) == 3
    assert notification(pool.bed.db, cs).attempts == 1  # nobody else took it over


def test_a_job_at_its_attempt_limit_is_dead_lettered_and_the_row_marked_dead(pool: Pool):
    pool.bed.server.refuse_recipient("bob@example.org", "451 4.3.2 not now")
    pool.start(job_max_attempts=2)
    cs = pool.push()
    wait_until(lambda: notification(pool.bed.db, cs).state is NotificationState.DEAD, "the row to die")
    n = notification(pool.bed.db, cs)
    assert "gave up after 2 attempts" in n.last_error and "451 4.3.2 not now" in n.last_error
    with make_queue(pool.bed.settings) as q:
        assert [d.changeset_id for d in q.dead_letters()] == [cs]


def test_a_worker_beats_while_it_runs_and_removes_its_heartbeat_when_it_stops(pool: Pool):
    worker = pool.start()
    wait_until(lambda: alive(pool.bed.db, kind="worker"), "a heartbeat")
    (beat,) = alive(pool.bed.db, kind="worker")
    assert beat.name == worker.consumer and beat.info["state"] in ("idle", "busy")
    pool.stop(worker)
    assert alive(pool.bed.db, kind="worker") == []
