"""The outbox relay: rows the queue missed get pushed, idempotently (real Redis or SQL queue, SQLite)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from herald.config import DispatchMode, Settings
from herald.delivery import Deliverer, Verdict
from herald.mail import make_pool
from herald.outbox import Notification, NotificationState, lock
from herald.outbox.records import requeue_after
from herald.queue import Queue, QueueUnavailable, make_queue
from herald.tracker.models import utcnow
from herald.web.dispatcher import build_dispatcher
from herald.worker.relay import PENDING_GRACE_SECONDS, Relay
from tests.support.beds import Bed, notification
from tests.support.redis_server import RedisServer
from tests.support.smtp import HANG
from tests.support.waiting import wait_until


def _settings(request: pytest.FixtureRequest, bed: Bed, backend: str) -> Settings:
    s = dataclasses.replace(
        bed.settings, async_emails=dataclasses.replace(bed.settings.async_emails, all=True)
    )
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        namespace: str = request.getfixturevalue("redis_namespace")
        s = dataclasses.replace(s, queue_backend="redis", redis_url=server.url, redis_namespace=namespace)
    return s


@pytest.fixture(params=["redis", "sql"])
def settings(request: pytest.FixtureRequest, bed: Bed) -> Settings:
    """Each test on both queue backends."""
    return _settings(request, bed, request.param)


@pytest.fixture
def redis_settings(request: pytest.FixtureRequest, bed: Bed) -> Settings:
    return _settings(request, bed, "redis")


@pytest.fixture
def queue(settings: Settings) -> Iterator[Queue]:
    with make_queue(settings) as q:
        yield q


@pytest.fixture
def redis_queue(redis_settings: Settings) -> Iterator[Queue]:
    with make_queue(redis_settings) as q:
        yield q


def at(seconds: float):
    return lambda: utcnow() + timedelta(seconds=seconds)


def drain(queue: Queue) -> list:
    jobs = []
    while (job := queue.claim("test", 0)) is not None:
        jobs.append(job)
        queue.ack(job)
    return jobs


def test_a_pending_row_is_pushed_after_the_grace_period_only(bed: Bed, settings: Settings, queue: Queue):
    cs = bed.changeset()  # committed, never pushed: the front end died, or the queue was down
    assert Relay(bed.db, queue, settings).run_once().pushed == 0  # the front end may still be pushing it
    report = Relay(bed.db, queue, settings, clock=at(3)).run_once()
    assert report.pushed == 1
    n = notification(bed.db, cs)
    assert n.state is NotificationState.QUEUED and n.job_id and n.queued_at
    assert [(j.id, j.changeset_id) for j in drain(queue)] == [(n.job_id, cs)]
    # Looked at again only after requeue_after, not on every run.
    assert Relay(bed.db, queue, settings, clock=at(4)).run_once().pushed == 0


def test_re_pushing_a_job_the_queue_still_holds_changes_nothing(bed: Bed, settings: Settings, queue: Queue):
    dispatcher = build_dispatcher(settings, bed.db)
    cs = bed.changeset()
    dispatcher.after_commit(cs, DispatchMode.ASYNC)
    dispatcher.close()
    later = requeue_after(settings) + 2
    assert Relay(bed.db, queue, settings, clock=at(later)).run_once().pushed == 1
    jobs = drain(queue)
    assert [j.changeset_id for j in jobs] == [cs]  # one job, not two


def test_a_queued_job_that_redis_forgot_is_pushed_again_with_its_id(
    bed: Bed, redis_settings: Settings, redis_queue: Queue, redis_server: RedisServer
):
    settings, queue = redis_settings, redis_queue
    dispatcher = build_dispatcher(settings, bed.db)
    cs = bed.changeset()
    dispatcher.after_commit(cs, DispatchMode.ASYNC)
    dispatcher.close()
    job_id = notification(bed.db, cs).job_id
    client = redis_server.client()
    client.delete(*client.keys(f"{{{settings.redis_namespace}*"))  # a restart without persistence
    client.close()
    assert drain(queue) == []
    assert Relay(bed.db, queue, settings, clock=at(requeue_after(settings) + 2)).run_once().pushed == 1
    assert [(j.id, j.changeset_id) for j in drain(queue)] == [(job_id, cs)]


def test_an_inline_retry_that_is_due_goes_through_the_queue(bed: Bed, settings: Settings, queue: Queue):
    cs = bed.changeset(DispatchMode.INLINE)
    due = utcnow() + timedelta(seconds=5)
    with bed.db.session() as s:
        s.execute(
            update(Notification)
            .where(Notification.changeset_id == cs)
            .values(state=NotificationState.RETRYING, next_attempt_at=due)
        )
    assert Relay(bed.db, queue, settings, clock=at(2)).run_once().pushed == 0  # not due yet
    assert Relay(bed.db, queue, settings, clock=at(7)).run_once().pushed == 1
    n = notification(bed.db, cs)
    assert n.state is NotificationState.RETRYING and n.job_id
    assert [j.id for j in drain(queue)] == [n.job_id]


def test_a_running_row_whose_holder_died_is_pushed(bed: Bed, settings: Settings, queue: Queue):
    cs = bed.changeset(DispatchMode.INLINE)
    with bed.db.session() as s:
        assert lock.acquire(s.connection(), cs, "web:dead-request", 5, now=utcnow()).lease is not None
    assert Relay(bed.db, queue, settings, clock=at(3)).run_once().pushed == 0  # lease still holds
    assert Relay(bed.db, queue, settings, clock=at(6)).run_once().pushed == 1
    assert [j.changeset_id for j in drain(queue)] == [cs]


def test_rows_whose_job_was_dead_lettered_are_marked_dead(bed: Bed, settings: Settings, queue: Queue):
    dispatcher = build_dispatcher(settings, bed.db)
    cs = bed.changeset()
    dispatcher.after_commit(cs, DispatchMode.ASYNC)
    dispatcher.close()
    job = queue.claim("test", 1.0)
    assert job is not None
    queue.dead(job, "poison")
    report = Relay(bed.db, queue, settings).run_once()
    assert report.marked_dead == 1
    n = notification(bed.db, cs)
    assert n.state is NotificationState.DEAD and "poison" in n.last_error and n.job_id in n.last_error


def test_with_the_queue_down_the_relay_raises_and_loses_nothing(
    bed: Bed, redis_settings: Settings, redis_queue: Queue, redis_server: RedisServer
):
    settings, queue = redis_settings, redis_queue
    cs = bed.changeset()
    redis_server.stop()
    try:
        with pytest.raises(QueueUnavailable):
            Relay(bed.db, queue, settings, clock=at(3)).run_once()
    finally:
        redis_server.start()
    n = notification(bed.db, cs)
    assert n.state is NotificationState.PENDING and n.job_id  # the id is kept for the next push
    assert Relay(bed.db, queue, settings, clock=at(3)).run_once().pushed == 1
    assert [j.id for j in drain(queue)] == [n.job_id]


def test_an_inline_delivery_in_progress_is_handed_to_no_other_process(
    bed: Bed, settings: Settings, queue: Queue
):
    """Issue 9, defect 7: in 0.1 an inline delivery left its row ``pending`` while it worked, so past the
    relay's grace a worker planned the same messages again, in parallel. The request's run holds the
    changeset's lock: the relay leaves the row alone and a worker's run finds it busy, mailing no one."""
    bed.server.script_data(HANG)  # the request's first mail hangs in DATA: the delivery is mid-run
    dispatcher = build_dispatcher(settings, bed.db)
    cs = bed.changeset(DispatchMode.INLINE)
    request = threading.Thread(target=dispatcher.after_commit, args=(cs, DispatchMode.INLINE))
    request.start()
    try:
        wait_until(lambda: bed.server.data_count >= 1, "the inline delivery to be sending")
        past_grace = PENDING_GRACE_SECONDS + 1  # and within the lease, which a live run keeps
        assert past_grace < settings.lease_seconds
        assert Relay(bed.db, queue, settings, clock=at(past_grace)).run_once().pushed == 0
        assert drain(queue) == []
        relay = make_pool(settings, max_connections=1)
        try:
            worker = Deliverer(bed.db, settings, relay).deliver(
                cs, holder="worker:1", mode=DispatchMode.ASYNC
            )
        finally:
            relay.close()
        assert worker.verdict is Verdict.BUSY
    finally:
        bed.server.drop_connections()
        request.join(timeout=60)
        dispatcher.close()
    assert not request.is_alive()
    received = [m.rcpt_tos[0] for m in bed.server.messages]
    assert len(received) == len(set(received))  # nobody twice
