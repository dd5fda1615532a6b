"""The workers' heartbeats as ``herald check``, the metrics and the admin page read them.

Each worker and supervisor writes a row in ``worker_heartbeats`` every few seconds (``herald.worker``
writes them; ``ops`` may read the tracker database but not import the worker). A row past its
``expires_at`` belongs to a process that died or hung.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from herald.config import Settings
from herald.tracker.db import Database
from herald.tracker.models import LeaderLease, WorkerHeartbeat, utcnow

__all__ = [
    "HostProcesses",
    "RelayLeader",
    "alive",
    "by_host",
    "heartbeats",
    "live_worker_count",
    "relay_leader",
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
