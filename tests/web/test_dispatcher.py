"""The web's dispatcher: inline delivery that never raises, and async pushes that stay fast when the queue
is down (real Redis, real aiosmtpd, real SQLite)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from herald.config import DispatchMode
from herald.outbox import DeliveryStatus, NotificationState
from herald.queue import make_queue
from herald.queue.errors import QueueUnavailable
from herald.web.dispatcher import CircuitBreaker, FrontEndDispatcher, build_dispatcher
from tests.support.beds import Bed, deliveries, notification
from tests.support.redis_server import RedisServer
from tests.support.services import free_port


def test_inline_delivers_in_the_request_and_logs_start_and_end(bed: Bed, capture_log):
    log = capture_log("herald.notification")
    dispatcher = build_dispatcher(bed.settings, bed.db)
    try:
        cs = bed.changeset(DispatchMode.INLINE)
        assert dispatcher.mode_for(bed.world.public.id) is DispatchMode.INLINE
        dispatcher.after_commit(cs, DispatchMode.INLINE)
    finally:
        dispatcher.close()
    assert len(bed.server.messages) == 3
    assert notification(bed.db, cs).state is NotificationState.DONE
    lines = log.messages()
    assert lines[0].startswith(f"Notification: Start notification changeset_id={cs} ")
    assert lines[0].endswith("recipients=3 mode=inline")
    assert lines[-1].startswith(f"Notification: End notification changeset_id={cs} ")


def test_an_inline_mail_failure_never_reaches_the_caller_and_is_recorded(bed: Bed):
    nobody = dataclasses.replace(bed.settings, smtp_port=free_port())
    dispatcher = build_dispatcher(nobody, bed.db)
    try:
        cs = bed.changeset(DispatchMode.INLINE)
        dispatcher.after_commit(cs, DispatchMode.INLINE)  # must not raise
    finally:
        dispatcher.close()
    n = notification(bed.db, cs)
    assert n.state is NotificationState.RETRYING and n.next_attempt_at is not None
    assert "cannot reach SMTP server" in n.last_error
    # The relay itself is down: nobody is charged an attempt; the recovery worker takes it from here.
    assert all(
        d.status is DeliveryStatus.PENDING and d.attempts == 0 for d in deliveries(bed.db, cs).values()
    )


class BrokenRelay:
    def send_bytes(self, *args, **kwargs):
        raise RuntimeError("a bug in the relay pool")

    def probe(self) -> None:
        raise RuntimeError("a bug in the relay pool")

    def close(self) -> None:
        pass


def test_even_a_broken_relay_does_not_fail_the_request(bed: Bed):
    dispatcher = FrontEndDispatcher(bed.settings, bed.db, relay=BrokenRelay())
    cs = bed.changeset(DispatchMode.INLINE)
    dispatcher.after_commit(cs, DispatchMode.INLINE)  # must not raise
    n = notification(bed.db, cs)
    assert n.state is NotificationState.RETRYING and "a bug in the relay pool" in n.last_error


def test_async_pushes_a_job_and_marks_the_row_queued(redis_bed: Bed):
    dispatcher = build_dispatcher(redis_bed.settings, redis_bed.db)
    try:
        assert dispatcher.mode_for(redis_bed.world.public.id) is DispatchMode.ASYNC
        cs = redis_bed.changeset()
        dispatcher.after_commit(cs, DispatchMode.ASYNC)
    finally:
        dispatcher.close()
    n = notification(redis_bed.db, cs)
    assert n.state is NotificationState.QUEUED and n.job_id and n.queued_at and n.next_attempt_at
    assert redis_bed.server.messages == []  # nothing is sent on the request path
    with make_queue(redis_bed.settings) as queue:
        job = queue.claim("test", 1.0)
    assert job is not None and (job.id, job.changeset_id) == (n.job_id, cs)


def test_async_with_the_sql_queue(bed: Bed):
    settings = dataclasses.replace(
        bed.settings, async_emails=dataclasses.replace(bed.settings.async_emails, all=True)
    )
    assert settings.queue_backend == "sql"
    dispatcher = build_dispatcher(settings, bed.db)
    try:
        cs = bed.changeset()
        dispatcher.after_commit(cs, DispatchMode.ASYNC)
    finally:
        dispatcher.close()
    with make_queue(settings) as queue:
        job = queue.claim("test", 0)
    assert job is not None and job.changeset_id == cs
    assert notification(bed.db, cs).state is NotificationState.QUEUED


def test_with_redis_down_requests_stay_fast_and_rows_stay_pending(
    redis_bed: Bed, redis_server: RedisServer, capture_log
):
    log = capture_log("herald.dispatch")
    dispatcher = build_dispatcher(redis_bed.settings, redis_bed.db)
    redis_server.stop()
    try:
        timings = []
        ids = []
        for _ in range(5):
            cs = redis_bed.changeset()
            started = time.perf_counter()
            dispatcher.after_commit(cs, DispatchMode.ASYNC)
            timings.append(time.perf_counter() - started)
            ids.append(cs)
    finally:
        redis_server.start()
        dispatcher.close()
    assert max(timings) < 0.5, timings  # the first one tries and fails fast
    assert sorted(timings)[3] < 0.01, timings  # the breaker skips the others
    assert all(notification(redis_bed.db, cs).state is NotificationState.PENDING for cs in ids)
    assert redis_bed.server.messages == []  # never sent inline instead
    warnings = [m for m in log.messages() if m.startswith("queue unavailable")]
    assert len(warnings) == 1


def test_circuit_breaker_opens_for_its_cooldown_then_lets_one_try():
    now = [100.0]
    breaker = CircuitBreaker(cooldown=1.0, clock=lambda: now[0])
    assert breaker.allow()
    assert breaker.failed() is True  # an outage starts
    assert not breaker.allow()
    now[0] += 0.99
    assert not breaker.allow()
    now[0] += 0.02
    assert breaker.allow()
    assert breaker.failed() is False  # still the same outage
    now[0] += 1.5
    assert breaker.succeeded() is True and breaker.allow()
    assert breaker.succeeded() is False


def test_queue_unavailable_is_what_a_dead_redis_raises(redis_bed: Bed, redis_server: RedisServer):
    # The dispatcher's fast client translates errors like the workers' one does.
    from herald.web.dispatcher import _front_end_queue

    queue, close = _front_end_queue(redis_bed.settings)
    redis_server.stop()
    try:
        started = time.perf_counter()
        with pytest.raises(QueueUnavailable):
            queue.ping()
        assert time.perf_counter() - started < 0.5
    finally:
        redis_server.start()
        close()


def test_an_inline_change_with_too_many_recipients_goes_to_the_workers(make_bed, sqlite_db, capture_log):
    log = capture_log("herald.dispatch")
    bed = make_bed(sqlite_db, inline_max_recipients=2)
    dispatcher = build_dispatcher(bed.settings, bed.db)
    try:
        cs = bed.changeset(DispatchMode.INLINE)  # 3 recipients
        dispatcher.after_commit(cs, DispatchMode.INLINE)
    finally:
        dispatcher.close()
    assert bed.server.messages == []  # nothing sent in the request
    assert notification(bed.db, cs).state is NotificationState.PENDING  # the relay pushes it to a worker
    assert any(
        f"changeset_id={cs} has 3 recipients, more than inline_max_recipients = 2: handed to the backend "
        "workers" in m
        for m in log.messages()
    )


def test_with_a_queue_the_too_large_inline_change_is_pushed_at_once(redis_bed: Bed):
    settings = dataclasses.replace(
        redis_bed.settings,
        inline_max_recipients=2,
        async_emails=dataclasses.replace(
            redis_bed.settings.async_emails, all=False, projects=frozenset({999})
        ),
    )
    dispatcher = build_dispatcher(settings, redis_bed.db)
    try:
        cs = redis_bed.changeset(DispatchMode.INLINE)
        dispatcher.after_commit(cs, DispatchMode.INLINE)
    finally:
        dispatcher.close()
    with make_queue(settings) as queue:
        job = queue.claim("test", 1.0)
    assert job is not None and job.changeset_id == cs
    assert redis_bed.server.messages == []
