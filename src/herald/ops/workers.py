"""The workers' heartbeats as ``herald check``, ``/healthz``, the metrics and the admin page read them.

Each worker and supervisor writes a row in ``worker_heartbeats`` every few seconds (``herald.worker``
writes them; ``ops`` may read the tracker database but not import the worker). A row past its
``expires_at`` belongs to a process that died or hung; a clean exit deletes its row. A worker's ``info``
follows the contract documented on ``herald.worker.hooks.HeartbeatHook`` (readers tolerate missing keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from herald.config import Settings
from herald.tracker.db import Database
from herald.tracker.models import LeaderLease, WorkerHeartbeat, utcnow

__all__ = [
    "HostProcesses",
    "JobInHand",
    "ProcessView",
    "RelayLeader",
    "alive",
    "by_host",
    "expected_workers",
    "heartbeats",
    "live_worker_count",
    "missing_parts",
    "processes",
    "relay_leader",
    "workers_wanted",
]


def workers_wanted(settings: Settings) -> int:
    """How many workers one supervisor keeps: ``nb_backend_workers`` when ``async_emails`` names a project,
    else at most one (the recovery worker). ``herald.worker.supervisor`` applies the same rule."""
    if settings.async_emails.enabled:
        return settings.nb_backend_workers
    return min(1, settings.nb_backend_workers)


@dataclass(frozen=True)
class JobInHand:
    job_id: str
    changeset_id: int | None
    since: float  # unix time the worker received it


@dataclass(frozen=True)
class ProcessView:
    """One heartbeat row, read: who, whether it is still beating, and what it said last."""

    name: str
    kind: str
    host: str
    pid: int
    started_at: datetime
    beat_at: datetime
    alive: bool
    info: dict[str, Any]

    def silent_for(self, now: datetime) -> float:
        return max(0.0, (now - self.beat_at).total_seconds())

    @property
    def jobs(self) -> list[JobInHand]:
        """The jobs in hand at its last beat, oldest first (garbage entries skipped)."""
        found = []
        for job in self.info.get("jobs") or []:
            if not isinstance(job, dict):
                continue
            since = sane_time(job.get("since"))
            if since is None:
                continue
            cs = job.get("changeset_id")
            found.append(
                JobInHand(str(job.get("job_id", "?"))[:64], cs if isinstance(cs, int) else None, since)
            )
        return sorted(found, key=lambda j: j.since)

    @property
    def relay(self) -> dict[str, Any]:
        relay = self.info.get("relay")
        return relay if isinstance(relay, dict) else {}

    @property
    def relay_down(self) -> bool:
        """The worker's relay gate is closed (the SMTP relay refuses it)."""
        return self.relay.get("up") is False


def expected_workers(settings: Settings, procs: list[ProcessView]) -> int:
    """How many workers should be alive: what the live supervisors say they keep (one per host, summed),
    else what this configuration asks of one supervisor."""
    wanted = [
        p.info.get("workers_wanted")
        for p in procs
        if p.kind == "supervisor" and p.alive and isinstance(p.info.get("workers_wanted"), int)
    ]
    spawning = [w for w in wanted if w and w > 0]
    return sum(spawning) if spawning else workers_wanted(settings)


def missing_parts(settings: Settings, procs: list[ProcessView]) -> dict[str, Any]:
    """What ``/healthz`` reports as missing, without names, hosts or errors (it is unauthenticated):
    ``workers`` (fewer alive than expected), ``outbox-relay`` (no live supervisor or ``herald relay``
    while workers are wanted), ``smtp-relay`` (every live worker finds the SMTP relay unusable)."""
    expected = expected_workers(settings, procs)
    live = [p for p in procs if p.kind == "worker" and p.alive]
    missing: list[str] = []
    if len(live) < expected:
        missing.append("workers")
    if workers_wanted(settings) and not any(p.kind == "supervisor" and p.alive for p in procs):
        missing.append("outbox-relay")
    if live and all(p.relay_down for p in live):
        missing.append("smtp-relay")
    return {"missing": missing, "workers": {"alive": len(live), "expected": expected}}


def sane_time(value: object, now: float | None = None) -> float | None:
    """A unix time that can be real (after 2020, not in the future by more than a minute), else None."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    limit = (now if now is not None else utcnow().timestamp()) + 60
    return float(value) if 1_577_836_800 <= value <= limit else None


def processes(db: Database, *, now: datetime | None = None) -> list[ProcessView]:
    """Every heartbeat row, live or not, by name."""
    now = now or utcnow()
    with db.read() as session:
        rows = session.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.name)).all()
        return [
            ProcessView(
                name=r.name,
                kind=r.kind,
                host=r.host,
                pid=r.pid,
                started_at=r.started_at,
                beat_at=r.beat_at,
                alive=r.expires_at > now,
                info=r.info if isinstance(r.info, dict) else {},
            )
            for r in rows
        ]


def alive(db: Database, *, kind: str | None = None, now: datetime | None = None) -> list[WorkerHeartbeat]:
    """Heartbeat rows not yet expired (``kind``: ``worker`` or ``supervisor``, None for both)."""
    now = now or utcnow()
    with db.read() as session:
        query = select(WorkerHeartbeat).where(WorkerHeartbeat.expires_at > now).order_by(WorkerHeartbeat.name)
        if kind is not None:
            query = query.where(WorkerHeartbeat.kind == kind)
        return list(session.scalars(query))


def heartbeats(db: Database) -> list[WorkerHeartbeat]:
    """Every heartbeat row, live or expired (an expired row not deleted is a process that did not exit
    cleanly: dead, frozen or hung)."""
    with db.read() as session:
        return list(session.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.name)))


def live_worker_count(settings: Settings, db: Database) -> int:
    """How many workers have a fresh heartbeat (what ``herald check`` and ``/metrics`` report).

    ``settings`` is accepted for the callers' convenience; the count does not depend on it.
    """
    return len(alive(db, kind="worker"))


@dataclass(frozen=True)
class HostProcesses:
    """The heartbeat rows of one host (its ``node_name``), live and expired, each list sorted by name."""

    host: str
    live: list[WorkerHeartbeat]
    expired: list[WorkerHeartbeat]

    @property
    def workers(self) -> list[WorkerHeartbeat]:
        return [row for row in self.live if row.kind == "worker"]


def by_host(db: Database, *, now: datetime | None = None) -> list[HostProcesses]:
    """Every host's processes, grouped by host (sorted), from the heartbeats of the whole deployment.

    Expired rows are kept apart: a host whose rows all expired vanished (or is cut off) without a clean stop.
    """
    now = now or utcnow()
    with db.read() as session:
        rows = list(
            session.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.host, WorkerHeartbeat.name))
        )
    hosts: dict[str, HostProcesses] = {}
    for row in rows:
        group = hosts.setdefault(row.host, HostProcesses(row.host, [], []))
        (group.live if row.expires_at > now else group.expired).append(row)
    return list(hosts.values())


@dataclass(frozen=True)
class RelayLeader:
    """Who runs the outbox relay of the deployment (``holder`` is ``<host>:<role>:<pid>``)."""

    holder: str | None
    fence: int
    lease_until: datetime | None
    acquired_at: datetime | None
    live: bool


def relay_leader(db: Database, *, now: datetime | None = None) -> RelayLeader | None:
    """The relay's leader lease, or None if no supervisor ever ran the relay on this database."""
    now = now or utcnow()
    with db.read() as session:
        row = session.get(LeaderLease, "relay")
        if row is None:
            return None
        live = row.holder is not None and row.lease_until is not None and row.lease_until > now
        return RelayLeader(row.holder, row.fence, row.lease_until, row.acquired_at, live)
