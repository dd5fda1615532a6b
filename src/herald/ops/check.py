"""``herald check``: one Nagios-style verdict on whether notifications are flowing.

Exit codes follow the Nagios plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. The first line of
the text output is the verdict with performance data; the following lines give each finding.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from herald.config import Settings
from herald.outbox import Backlog, read_backlog
from herald.queue import Queue, QueueError, QueueStats
from herald.tracker.db import Database


class Status(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass
class CheckReport:
    status: Status = Status.OK
    findings: list[tuple[Status, str]] = field(default_factory=list)
    perfdata: dict[str, float | int] = field(default_factory=dict)

    def add(self, status: Status, message: str) -> None:
        self.findings.append((status, message))
        if status > self.status and not (self.status is Status.CRITICAL and status is Status.UNKNOWN):
            self.status = status

    def summary(self) -> str:
        worst = [m for s, m in self.findings if s is self.status] or ["notifications are flowing"]
        perf = " ".join(f"{k}={v}" for k, v in self.perfdata.items())
        return f"HERALD {self.status.name} - {worst[0]}" + (f" | {perf}" if perf else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.name,
            "code": int(self.status),
            "findings": [{"status": s.name, "message": m} for s, m in self.findings],
            "perfdata": self.perfdata,
        }


LiveWorkers = Callable[[], int]


def run_check(
    settings: Settings, db: Database, queue: Queue | None, live_workers: LiveWorkers | None = None
) -> CheckReport:
    """Look at the outbox, the queue and the workers; never raises for an unreachable part."""
    report = CheckReport()
    backlog = _check_backlog(settings, db, report)
    stats = _check_queue(queue, report) if queue is not None else None
    _check_workers(settings, live_workers, report, backlog)
    if backlog is not None:
        report.perfdata.update(
            unfinished=backlog.unfinished,
            stale=backlog.stale,
            oldest_age_s=round(backlog.oldest_unfinished_age, 1),
            dead=backlog.states.get("dead", 0),
            failed_deliveries=backlog.deliveries.get("failed", 0),
        )
    if stats is not None:
        report.perfdata.update(
            queue_depth=stats.depth, queue_in_flight=stats.in_flight, queue_dead=stats.dead
        )
    if not report.findings:
        report.add(Status.OK, "notifications are flowing")
    return report


def _check_backlog(settings: Settings, db: Database, report: CheckReport) -> Backlog | None:
    try:
        with db.read() as session:
            backlog = read_backlog(session, settings.stale_after_seconds)
    except Exception as exc:  # the check reports a broken part, it does not crash on it
        report.add(Status.CRITICAL, f"the tracker database cannot be read: {exc.__class__.__name__}")
        return None
    limit = settings.stale_after_seconds
    if backlog.stale:
        status = Status.CRITICAL if backlog.oldest_unfinished_age > 10 * limit else Status.WARNING
        report.add(
            status,
            f"{backlog.stale} notification(s) pending for more than {limit} s (oldest: changeset "
            f"{backlog.oldest_unfinished_changeset}, {backlog.oldest_unfinished_age:.0f} s)",
        )
    dead = backlog.states.get("dead", 0)
    if dead:
        report.add(Status.WARNING, f"{dead} notification(s) dead-lettered: see herald queue dead")
    return backlog


def _check_queue(queue: Queue, report: CheckReport) -> QueueStats | None:
    try:
        stats = queue.stats()
    except QueueError as exc:
        report.add(Status.CRITICAL, f"the queue cannot be reached: {exc}")
        return None
    if stats.dead:
        report.add(Status.WARNING, f"{stats.dead} job(s) in the queue's dead letters: see herald queue dead")
    return stats


def _check_workers(
    settings: Settings, live_workers: LiveWorkers | None, report: CheckReport, backlog: Backlog | None
) -> None:
    if not settings.async_emails.enabled:
        return
    if settings.nb_backend_workers == 0:
        report.add(
            Status.CRITICAL,
            f"async_emails = {settings.async_emails} but nb_backend_workers = 0: "
            "those projects' notifications are not delivered",
        )
        return
    if live_workers is None:
        return
    try:
        live = live_workers()
    except Exception as exc:
        report.add(Status.UNKNOWN, f"cannot read worker heartbeats: {exc.__class__.__name__}")
        return
    report.perfdata["workers_alive"] = live
    if live == 0:
        report.add(
            Status.CRITICAL,
            f"no backend worker is alive (nb_backend_workers = {settings.nb_backend_workers})",
        )
    elif live < settings.nb_backend_workers:
        report.add(Status.WARNING, f"{live} of {settings.nb_backend_workers} backend workers alive")
