"""Prometheus metrics, computed at scrape time from the outbox, the delivery ledger and the queue.

Reading the shared state at scrape time (rather than counting in each process) gives the same figures
whichever process is scraped and survives restarts: the workers are separate processes, and the ledger
already records every delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from herald.config import Settings
from herald.outbox import DeliveryStatus, NotificationState, read_backlog
from herald.queue import Queue, QueueError
from herald.tracker.db import Database

log = logging.getLogger("herald.metrics")


class HeraldCollector(Collector):
    def __init__(
        self,
        settings: Settings,
        db: Database,
        queue: Queue | None,
        live_workers: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.queue = queue
        self.live_workers = live_workers

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("herald_up", "Whether each part answered this scrape", labels=["part"])
        try:
            with self.db.read() as session:
                backlog = read_backlog(session, self.settings.stale_after_seconds)
            up.add_metric(["database"], 1)
        except Exception as exc:  # a scrape reports a broken part as down, it does not fail
            log.warning("metrics: database unreadable: %s", exc.__class__.__name__)
            up.add_metric(["database"], 0)
            backlog = None
        if backlog is not None:
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
                "Age of the oldest notification not yet done",
                value=backlog.oldest_unfinished_age,
            )
            yield GaugeMetricFamily(
                "herald_stale_notifications",
                "Unfinished notifications older than stale_after_seconds",
                value=backlog.stale,
            )
        if self.queue is not None:
            try:
                stats = self.queue.stats()
                up.add_metric(["queue"], 1)
            except QueueError:
                up.add_metric(["queue"], 0)
                stats = None
            if stats is not None:
                jobs = GaugeMetricFamily("herald_queue_jobs", "Jobs in the queue by state", labels=["state"])
                jobs.add_metric(["ready"], stats.depth)
                jobs.add_metric(["in_flight"], stats.in_flight)
                jobs.add_metric(["delayed"], stats.delayed)
                jobs.add_metric(["dead"], stats.dead)
                yield jobs
                yield GaugeMetricFamily(
                    "herald_queue_oldest_job_seconds",
                    "Age of the oldest live job",
                    value=stats.oldest_age_seconds,
                )
        if self.live_workers is not None:
            try:
                yield GaugeMetricFamily(
                    "herald_workers_alive", "Workers with a fresh heartbeat", value=self.live_workers()
                )
            except Exception:  # heartbeats unreadable: leave the gauge out rather than report 0
                log.warning("metrics: worker heartbeats unreadable")
        yield GaugeMetricFamily(
            "herald_backend_workers_configured", "nb_backend_workers", value=self.settings.nb_backend_workers
        )
        yield up


def render_metrics(collector: HeraldCollector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
