"""The worker loop in-process (a thread) against a real redis-server, aiosmtpd and SQLite: claim, deliver,
settle; concurrency; the relay-down hold; the rate limit; malformed jobs; queue outages; shutdown with a
grace period; the lease keeper; heartbeats."""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Iterator

import pytest

from herald.config import DispatchMode, parse_rate_limit
from herald.mail import make_pool
from herald.mail.transport import Receipt
from herald.ops.workers import alive
from herald.outbox import NotificationState
from herald.queue import make_queue
from herald.queue.keys import JOB_FIELD, RedisKeys
from herald.web.dispatcher import build_dispatcher
from herald.worker.loop import Worker
from tests.support.beds import Bed, deliveries, message_ids, notification
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until as _wait_until

WAIT = 10.0
wait_until = functools.partial(_wait_until, timeout=WAIT)


class Slow:
    """A real relay pool that takes its time per message (a slow SMTP server); counts sends in flight."""

    def __init__(self, inner, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()

    def send_bytes(self, raw, sender, recipient, *, message_id=None, utf8=False) -> Receipt:
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(self.seconds)
            return self.inner.send_bytes(raw, sender, recipient, message_id=message_id)
        finally:
            with self._lock:
                self.in_flight -= 1

    def probe(self) -> None:
        self.inner.probe()

    def close(self) -> None:
        self.inner.close()


@dataclasses.dataclass
class Pool:
    bed: Bed
    threads: list[tuple[Worker, threading.Thread, list[int]]]

    def start(self, worker_id: int = 1, relay=None, **overrides: object) -> Worker:
        settings = dataclasses.replace(self.bed.settings, **overrides)
        worker = Worker(settings, worker_id, relay=relay)
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
    client.xadd(
        RedisKeys(pool.bed.settings.redis_namespace, pool.bed.settings.queue_shards).shard(0).stream,
        {JOB_FIELD: b"\x80 not json"},
    )
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
    slow = Slow(make_pool(pool.bed.settings, max_connections=1), 0.4)
    worker = pool.start(relay=slow, worker_grace_seconds=0.2, smtp_max_connections=1)
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
    slow = Slow(make_pool(pool.bed.settings, max_connections=1), 1.0)
    pool.start(relay=slow, lease_seconds=2.0, smtp_max_connections=1)
    pool.start(worker_id=2, lease_seconds=2.0)
    cs = pool.push()
    wait_until(lambda: pool.done(cs), "the slow job to be done")
    ids = message_ids(pool.bed.server)
    assert len(ids) == len(set(ids)) == 3
    assert notification(pool.bed.db, cs).attempts == 1  # nobody else took it over


def test_a_recipient_retried_more_often_than_job_max_attempts_is_never_dead_lettered(pool: Pool):
    """Settled retries reset the job's claim count: only a job that is never settled is poison."""
    pool.bed.server.refuse_recipient("bob@example.org", "451 4.3.2 not now")
    pool.start(job_max_attempts=2, retry_base_seconds=0.02, retry_max_seconds=0.05)
    cs = pool.push()

    def bob_attempts() -> int:
        bob = deliveries(pool.bed.db, cs).get("bob@example.org")
        return bob.attempts if bob is not None else 0

    wait_until(lambda: bob_attempts() >= 4, "several retries of bob")
    pool.bed.server.accept_recipient("bob@example.org")
    wait_until(lambda: pool.done(cs), "bob delivered at last")
    with make_queue(pool.bed.settings) as q:
        assert q.dead_letters() == []
    assert deliveries(pool.bed.db, cs)["bob@example.org"].last_reply.startswith("250")


def test_deliveries_run_concurrently_and_recipients_go_out_in_parallel(pool: Pool):
    changes = [pool.push() for _ in range(4)]  # queued first: the worker finds a backlog
    slow = Slow(make_pool(pool.bed.settings, max_connections=6), 0.3)
    # smtp_max_connections is per host; nb_backend_workers = 2 gives this worker half of it.
    pool.start(relay=slow, worker_concurrency=4, smtp_max_connections=12)
    wait_until(lambda: all(pool.done(cs) for cs in changes), "the four notifications to be done")
    assert slow.most_in_flight >= 4  # one sequential worker would never have had two sends in flight
    ids = message_ids(pool.bed.server)
    assert len(ids) == len(set(ids)) == 12


def test_worker_concurrency_1_still_delivers_one_job_at_a_time(pool: Pool):
    slow = Slow(make_pool(pool.bed.settings, max_connections=1), 0.05)
    pool.start(relay=slow, worker_concurrency=1, smtp_max_connections=1)
    changes = [pool.push() for _ in range(3)]
    wait_until(lambda: all(pool.done(cs) for cs in changes), "the notifications to be done")
    assert slow.most_in_flight == 1
    assert len(set(message_ids(pool.bed.server))) == 9


def test_a_relay_outage_holds_sending_charges_nobody_and_drains_when_it_is_back(pool: Pool, capture_log):
    log = capture_log("herald.relay_gate")
    worker = pool.start(delivery_max_age=2)  # shorter than the outage: nobody may fail all the same
    pool.bed.server.go_down()
    changes = [pool.push() for _ in range(3)]
    wait_until(lambda: not worker.gate.is_open, "the worker to notice the relay is down")
    time.sleep(2.5)  # an outage longer than delivery_max_age
    ledgers = [deliveries(pool.bed.db, cs) for cs in changes]
    assert all(d.attempts == 0 and d.first_failed_at is None for ledger in ledgers for d in ledger.values())
    pool.bed.server.come_back()
    wait_until(lambda: all(pool.done(cs) for cs in changes), "every notification delivered after the outage")
    assert all(d.status.value == "sent" for cs in changes for d in deliveries(pool.bed.db, cs).values())
    ids = message_ids(pool.bed.server)
    assert len(ids) == len(set(ids)) == 9
    lines = log.messages()
    assert any("relay unusable" in m for m in lines) and any("relay usable again" in m for m in lines)


def test_the_rate_limit_is_honoured_across_the_workers_of_a_host(pool: Pool):
    limit = parse_rate_limit("4/s")
    pool.start(smtp_rate_limit=limit)
    pool.start(worker_id=2, smtp_rate_limit=limit)
    changes = [pool.push() for _ in range(4)]
    wait_until(lambda: all(pool.done(cs) for cs in changes), "12 mails at 4 a second", timeout=20)
    assert len(pool.bed.server.messages) == 12
    # The limiter spaces the sends; the server sees them a few ms later each, with jitter, so its count
    # uses a slightly shorter window than the limit's second.
    assert pool.bed.server.most_in_window(0.9) <= 4


def test_a_worker_beats_while_it_runs_and_removes_its_heartbeat_when_it_stops(pool: Pool):
    worker = pool.start()
    wait_until(lambda: alive(pool.bed.db, kind="worker"), "a heartbeat")
    (beat,) = alive(pool.bed.db, kind="worker")
    assert beat.name == worker.consumer and beat.info["state"] in ("idle", "busy")
    pool.stop(worker)
    assert alive(pool.bed.db, kind="worker") == []


def test_the_heartbeat_follows_the_info_contract(pool: Pool):
    """What herald check, /healthz, the metrics and the console read (docs/operations.md, Heartbeats)."""
    worker = pool.start(relay=Slow(make_pool(pool.bed.settings, max_connections=4), 1.0))
    wait_until(lambda: alive(pool.bed.db, kind="worker"), "a heartbeat")
    cs = pool.push()

    def busy():
        beats = alive(pool.bed.db, kind="worker")
        return beats and beats[0].info["jobs"] and beats[0].info

    info = wait_until(
        busy, "the heartbeat to show the job in hand (the first beat after an idle worker takes one)"
    )
    assert info["state"] == "busy" and info["busy"] == 1 and info["slots"] == worker.concurrency
    (job,) = info["jobs"]
    assert job["changeset_id"] == cs and isinstance(job["job_id"], str)
    assert abs(job["since"] - time.time()) < 30
    assert info["relay"]["up"] is True and info["relay"]["last_error"] is None
    assert isinstance(info["relay"]["since"], float)
    wait_until(lambda: pool.done(cs), "the delivery")

    def idle():
        beats = alive(pool.bed.db, kind="worker")
        return beats and beats[0].info["done"] == 1 and beats[0].info

    info = wait_until(idle, "the job counted as done")
    assert info["state"] == "idle" and info["jobs"] == [] and info["failed"] == 0
