"""Prometheus metrics: the whole installation from one scrape, whichever web process is scraped.

Everything is read at scrape time from what all processes share, so the figures count every worker
process on every host, not the scraped one:

- totals that only grow (sends by outcome and SMTP class, jobs by outcome, the enqueue → sent latency and
  job duration histograms) from the database, where each worker adds what it counted about once a second
  (:mod:`herald.outbox.stats` says why the database rather than a multiprocess registry);
- the workers (alive, busy, slots, relay up, oldest job in hand) from their heartbeats;
- the queue (depth, in flight, delayed, dead, oldest job) from the queue's own stats;
- the outbox (notifications by state, the oldest unfinished one) from the outbox tables.

A part that cannot be read is reported by ``herald_up{part=...} 0`` and its metrics are left out: a
scrape never fails because one part is down. Every metric is described in docs/operations.md, "Metrics".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from herald.config import Settings
from herald.ops.workers import heartbeats
from herald.outbox import DeliveryStatus, NotificationState, read_backlog, stats
from herald.queue import Queue, QueueError
from herald.tracker.db import Database
from herald.tracker.models import utcnow

__all__ = ["HeraldCollector", "render_metrics"]

log = logging.getLogger("herald.metrics")

#: Series shown at 0 before anything was counted, so that rules and dashboards find them from the start.
_KNOWN_ATTEMPTS = (
    ("sent", "2xx"),
    ("retrying", "4xx"),
    ("retrying", "connection"),
    ("failed", "5xx"),
    ("failed", "none"),
    ("held", "connection"),
    ("held", "4xx"),
)


class HeraldCollector(Collector):
    """Collects the metrics described in the module docstring, one read of each part per scrape."""

    def __init__(self, settings: Settings, db: Database, queue: Queue | None) -> None:
        self.settings = settings
        self.db = db
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("herald_up", "Whether each part answered this scrape", labels=["part"])
        yield from self._outbox(up)
        yield from self._queue(up)
        yield from self._workers(up)
        yield GaugeMetricFamily(
            "herald_backend_workers_configured", "nb_backend_workers", value=self.settings.nb_backend_workers
        )
        yield GaugeMetricFamily(
            "herald_stale_after_seconds",
            "stale_after_seconds: the age herald check (and the alert rules) call late",
            value=self.settings.stale_after_seconds,
        )
        yield GaugeMetricFamily(
            "herald_lease_seconds", "lease_seconds: a claim's lease", value=self.settings.lease_seconds
        )
        yield up

    # --- the outbox and the delivery totals (the database) ---------------------------------------------

    def _outbox(self, up: GaugeMetricFamily) -> Iterator[Metric]:
        try:
            with self.db.read() as session:
                backlog = read_backlog(session, self.settings.stale_after_seconds)
                totals = stats.read(session.connection())
        except Exception as exc:  # a scrape reports a broken part as down, it does not fail
            log.warning("metrics: database unreadable: %s", exc.__class__.__name__)
            up.add_metric(["database"], 0)
            return
        up.add_metric(["database"], 1)
        states = GaugeMetricFamily(
            "herald_notifications", "Notifications (one per changeset) by state", labels=["state"]
        )
        for state in NotificationState:
            states.add_metric([state.value], backlog.states.get(state.value, 0))
        yield states
        deliveries = GaugeMetricFamily(
            "herald_deliveries",
            "Per-recipient deliveries recorded in the ledger, by status",
            labels=["status"],
        )
        for status in DeliveryStatus:
            deliveries.add_metric([status.value], backlog.deliveries.get(status.value, 0))
        yield deliveries
        yield GaugeMetricFamily(
            "herald_oldest_unfinished_notification_seconds",
            "Age of the oldest notification not yet done (outbox, queued, retrying, in flight)",
            value=backlog.oldest_unfinished_age,
        )
        yield GaugeMetricFamily(
            "herald_stale_notifications",
            "Unfinished notifications older than stale_after_seconds",
            value=backlog.stale,
        )
        yield from _totals(totals)

    # --- the queue ---------------------------------------------------------------------------------------

    def _queue(self, up: GaugeMetricFamily) -> Iterator[Metric]:
        if self.queue is None:
            return
        try:
            queue_stats = self.queue.stats()
        except QueueError:
            up.add_metric(["queue"], 0)
            return
        up.add_metric(["queue"], 1)
        jobs = GaugeMetricFamily("herald_queue_jobs", "Jobs in the queue by state", labels=["state"])
        jobs.add_metric(["ready"], queue_stats.depth)
        jobs.add_metric(["in_flight"], queue_stats.in_flight)
        jobs.add_metric(["delayed"], queue_stats.delayed)
        jobs.add_metric(["dead"], queue_stats.dead)
        yield jobs
        yield GaugeMetricFamily(
            "herald_queue_oldest_job_seconds",
            "Age of the oldest live job",
            value=queue_stats.oldest_age_seconds,
        )

    # --- the workers (their heartbeats) ------------------------------------------------------------------

    def _workers(self, up: GaugeMetricFamily) -> Iterator[Metric]:
        now = utcnow()
        try:
            rows = heartbeats(self.db)
        except Exception as exc:
            log.warning("metrics: worker heartbeats unreadable: %s", exc.__class__.__name__)
            up.add_metric(["heartbeats"], 0)
            return
        up.add_metric(["heartbeats"], 1)
        workers = [r for r in rows if r.kind == "worker"]
        live = [r for r in workers if r.expires_at > now]
        views = [_WorkerView(r.info or {}, now) for r in live]
        yield GaugeMetricFamily("herald_workers_alive", "Workers with a fresh heartbeat", value=len(live))
        yield GaugeMetricFamily(
            "herald_workers_unresponsive",
            "Workers whose heartbeat ran out without a clean exit (dead, frozen or hung)",
            value=len(workers) - len(live),
        )
        yield GaugeMetricFamily(
            "herald_supervisors_alive",
            "Supervisors (and relays) with a fresh heartbeat",
            value=sum(1 for r in rows if r.kind != "worker" and r.expires_at > now),
        )
        yield GaugeMetricFamily(
            "herald_workers_busy",
            "Deliveries running now, over all live workers",
            value=sum(v.busy for v in views),
        )
        yield GaugeMetricFamily(
            "herald_worker_slots",
            "Deliveries the live workers can run at once (worker_concurrency each)",
            value=sum(v.slots for v in views),
        )
        yield GaugeMetricFamily(
            "herald_worker_oldest_job_seconds",
            "How long the longest-running job in any live worker's hands has run",
            value=max((v.oldest_job for v in views), default=0.0),
        )
        relay = [v.relay_up for v in views if v.relay_up is not None]
        if relay:
            yield GaugeMetricFamily(
                "herald_relay_up",
                "1 when every live worker can reach the SMTP relay, 0 when one holds its sending for it",
                value=1 if all(relay) else 0,
            )
            yield GaugeMetricFamily(
                "herald_workers_relay_down",
                "Live workers that see the relay down",
                value=sum(1 for ok in relay if not ok),
            )


class _WorkerView:
    """What the metrics read of a worker's heartbeat ``info`` (missing keys tolerated: both the 0.2 shape
    and the one with ``busy``/``slots``/``jobs``/``relay: {up}``)."""

    def __init__(self, info: Mapping[str, Any], now: datetime) -> None:
        jobs = info.get("jobs") if isinstance(info.get("jobs"), list) else None
        busy = info.get("busy")
        if isinstance(busy, int):
            self.busy = busy
        elif jobs is not None:
            self.busy = len(jobs)
        else:
            self.busy = len(info.get("in_hand") or [])
        slots = info.get("slots", info.get("concurrency"))
        self.slots = slots if isinstance(slots, int) else 0
        since = [j.get("since") for j in jobs or [] if isinstance(j, dict)]
        since = [s for s in since if isinstance(s, int | float)]
        if since:
            self.oldest_job = max(0.0, now.timestamp() - min(since))
        else:
            oldest = info.get("oldest_job_seconds")
            self.oldest_job = float(oldest) if isinstance(oldest, int | float) else 0.0
        relay = info.get("relay")
        if isinstance(relay, dict):
            self.relay_up: bool | None = bool(relay["up"]) if "up" in relay else None
        elif isinstance(relay, str):
            self.relay_up = relay == "up"
        else:
            self.relay_up = None


def _totals(totals: Mapping[stats.SeriesKey, float]) -> Iterator[Metric]:
    attempts = CounterMetricFamily(
        stats.ATTEMPTS,
        "Attempts to deliver one message to one recipient, by outcome and SMTP reply class",
        labels=["outcome", "smtp_class"],
    )
    seen: dict[tuple[str, str], float] = dict.fromkeys(_KNOWN_ATTEMPTS, 0.0)
    jobs: dict[str, float] = dict.fromkeys(stats.JOB_OUTCOMES, 0.0)
    for (metric, labels), value in totals.items():
        parsed = stats.parse_labels(labels)
        if metric == stats.ATTEMPTS and {"outcome", "smtp_class"} <= parsed.keys():
            key = (parsed["outcome"], parsed["smtp_class"])
            seen[key] = seen.get(key, 0.0) + value
        elif metric == stats.JOBS and "outcome" in parsed:
            jobs[parsed["outcome"]] = jobs.get(parsed["outcome"], 0.0) + value
    for key, value in sorted(seen.items()):
        attempts.add_metric(list(key), value)
    yield attempts
    job_family = CounterMetricFamily(
        stats.JOBS, "Jobs settled by the workers, by outcome (done, retry, busy, dead)", labels=["outcome"]
    )
    for outcome, value in sorted(jobs.items()):
        job_family.add_metric([outcome], value)
    yield job_family
    yield _histogram(
        stats.LATENCY,
        totals,
        "Seconds from the change's commit to the relay accepting the mail, per recipient",
    )
    yield _histogram(stats.JOB_DURATION, totals, "Seconds a worker spent on one job, claim to settle")


def _histogram(h: stats.Histogram, totals: Mapping[stats.SeriesKey, float], doc: str) -> Metric:
    per_bucket = {
        stats.parse_labels(labels).get("le"): value
        for (metric, labels), value in totals.items()
        if metric == h.bucket_metric
    }
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for bound in [*(repr(float(b)) for b in h.buckets), "+Inf"]:
        running += per_bucket.get(bound, 0.0)
        buckets.append((bound, running))
    family = HistogramMetricFamily(h.name, doc)
    family.add_metric([], buckets, totals.get((h.sum_metric, ""), 0.0))
    return family


def render_metrics(collector: HeraldCollector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
