"""The metrics' parts against a real database and aiosmtpd: what one delivery run counts (sends by outcome
and SMTP class, latencies), the database totals many writers add to, and what a scrape makes of them."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from herald.config import DispatchMode
from herald.delivery import Deliverer
from herald.mail import make_pool
from herald.ops.metrics import HeraldCollector, render_metrics
from herald.outbox import stats
from herald.queue.errors import QueueUnavailable
from herald.tracker.models import WorkerHeartbeat, utcnow
from herald.worker.hooks import MetricsHook
from tests.support.beds import Bed, make_settings


def deliver(bed: Bed, settings=None):
    settings = settings or bed.settings
    d = Deliverer(bed.db, settings, make_pool(settings, max_connections=2))
    return d.deliver(bed.changeset(), holder="t", mode=DispatchMode.ASYNC)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def scrape(bed: Bed, queue=None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(render_metrics(HeraldCollector(bed.settings, bed.db, queue)))


def test_a_run_counts_its_sends_by_outcome_and_smtp_class(any_bed: Bed):
    any_bed.server.refuse_recipient("carol@example.org")  # 550
    any_bed.server.refuse_recipient("dave@example.org", "451 4.7.1 greylisted")
    outcome = deliver(any_bed)
    assert outcome.attempts == {("sent", "2xx"): 1, ("failed", "5xx"): 1, ("retrying", "4xx"): 1}
    assert len(outcome.latencies) == 1 and 0 <= outcome.latencies[0] < 60


def test_a_relay_that_refuses_connections_is_counted_held_connection(bed: Bed, closed_port: int):
    settings = make_settings(bed.server, bed.tmp_path, smtp_port=closed_port)
    outcome = deliver(bed, settings)  # inline (no gate): the recipients are left open, nobody charged
    assert outcome.attempts == {("held", "connection"): 3}
    assert outcome.latencies == ()


@pytest.mark.parametrize(
    ("code", "expected"), [(250, "2xx"), (451, "4xx"), (421, "4xx"), (550, "5xx"), (None, "connection")]
)
def test_smtp_class(code, expected):
    assert stats.smtp_class(code) == expected


def test_many_writers_add_up_exactly(any_db):
    """Eight processes' worth of flushes at once: every increment is in the total once."""

    def writer() -> None:
        for _ in range(25):
            counts = stats.Counts()
            counts.inc(stats.ATTEMPTS, {"outcome": "sent", "smtp_class": "2xx"}, 2)
            counts.observe(stats.LATENCY, [0.07, 3.0])
            with any_db.write() as conn:
                stats.add(conn, counts.take())

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with any_db.read() as s:
        totals = stats.read(s.connection())
    assert totals[stats.ATTEMPTS, "outcome=sent,smtp_class=2xx"] == 8 * 25 * 2
    assert totals[stats.LATENCY.bucket_metric, "le=0.1"] == 200
    assert totals[stats.LATENCY.bucket_metric, "le=5.0"] == 200
    assert totals[stats.LATENCY.sum_metric, ""] == pytest.approx(200 * 3.07)


def test_a_failed_flush_keeps_its_counts_for_the_next(bed: Bed):
    hook = MetricsHook(bed.db)
    hook.counts.inc(stats.JOBS, {"outcome": "done"}, 3)
    engine = bed.db.engine
    bed.db.engine = None  # type: ignore[assignment]  # every write now fails
    try:
        hook.flush()
    finally:
        bed.db.engine = engine
    assert hook.counts.take() == {(stats.JOBS, "outcome=done"): 3}


def test_the_scrape_reads_the_totals_and_the_heartbeats_of_both_shapes(bed: Bed):
    with bed.db.write() as conn:
        stats.add(
            conn,
            {
                (stats.ATTEMPTS, "outcome=sent,smtp_class=2xx"): 5,
                (stats.JOBS, "outcome=busy"): 2,
                (stats.LATENCY.bucket_metric, "le=0.5"): 3,
                (stats.LATENCY.bucket_metric, "le=+Inf"): 1,
                (stats.LATENCY.sum_metric, ""): 100.0,
            },
        )
    now = utcnow()
    since = now.timestamp() - 42
    rows = [
        # The 0.2 heartbeat shape...
        ("h:worker-1", "worker", {"state": "busy", "in_hand": [7], "concurrency": 4, "relay": "up"}, 60),
        # ...and the one with busy/slots/jobs/relay{up} (herald check's contract).
        (
            "h:worker-2",
            "worker",
            {"busy": 2, "slots": 8, "jobs": [{"since": since}], "relay": {"up": False}},
            60,
        ),
        ("h:worker-3", "worker", {"busy": 5, "slots": 8}, -60),  # expired: frozen or dead
        ("h:supervisor", "supervisor", {}, 60),
    ]
    with bed.db.session() as s:
        for name, kind, info, ttl in rows:
            s.add(
                WorkerHeartbeat(
                    name=name,
                    kind=kind,
                    pid=1,
                    host="h",
                    beat_at=now,
                    expires_at=now + timedelta(seconds=ttl),
                    info=info,
                )
            )
    got = scrape(bed)
    key = ("herald_delivery_attempts_total", (("outcome", "sent"), ("smtp_class", "2xx")))
    assert got[key] == 5
    assert got["herald_delivery_attempts_total", (("outcome", "failed"), ("smtp_class", "5xx"))] == 0
    assert got["herald_jobs_total", (("outcome", "busy"),)] == 2
    assert got["herald_jobs_total", (("outcome", "dead"),)] == 0
    assert got["herald_delivery_latency_seconds_bucket", (("le", "0.25"),)] == 0
    assert got["herald_delivery_latency_seconds_bucket", (("le", "0.5"),)] == 3
    assert got["herald_delivery_latency_seconds_bucket", (("le", "86400.0"),)] == 3
    assert got["herald_delivery_latency_seconds_bucket", (("le", "+Inf"),)] == 4
    assert got["herald_delivery_latency_seconds_count", ()] == 4
    assert got["herald_delivery_latency_seconds_sum", ()] == 100
    assert got["herald_workers_alive", ()] == 2
    assert got["herald_workers_unresponsive", ()] == 1
    assert got["herald_supervisors_alive", ()] == 1
    assert got["herald_workers_busy", ()] == 3
    assert got["herald_worker_slots", ()] == 12
    assert got["herald_relay_up", ()] == 0 and got["herald_workers_relay_down", ()] == 1
    assert 42 <= got["herald_worker_oldest_job_seconds", ()] < 100
    assert got["herald_up", (("part", "database"),)] == 1


class _DownQueue:
    def stats(self):
        raise QueueUnavailable("connection refused")


def test_an_unreachable_queue_is_reported_not_raised(bed: Bed):
    got = scrape(bed, _DownQueue())
    assert got["herald_up", (("part", "queue"),)] == 0
    assert not any(name == "herald_queue_jobs" for name, _ in got)


def test_inline_deliveries_count_into_the_same_totals(bed: Bed):
    from herald.web.dispatcher import build_dispatcher

    bed.server.refuse_recipient("carol@example.org")
    dispatcher = build_dispatcher(bed.settings, bed.db)
    try:
        dispatcher.after_commit(bed.changeset(DispatchMode.INLINE), DispatchMode.INLINE)
    finally:
        dispatcher.close()  # writes what the front end counted
    got = scrape(bed)
    assert got["herald_delivery_attempts_total", (("outcome", "sent"), ("smtp_class", "2xx"))] == 2
    assert got["herald_delivery_attempts_total", (("outcome", "failed"), ("smtp_class", "5xx"))] == 1
    assert got["herald_delivery_latency_seconds_count", ()] == 2
    assert got["herald_jobs_total", (("outcome", "done"),)] == 0  # no job: inline
