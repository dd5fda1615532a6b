"""The workers' heartbeats as ``herald check``, the metrics and the admin page read them.

Each worker and supervisor writes a row in ``worker_heartbeats`` every few seconds (``herald.worker``
writes them; ``ops`` may read the tracker database but not import the worker). A row past its
``expires_at`` belongs to a process that died or hung.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from herald.config import Settings
from herald.tracker.db import Database
from herald.tracker.models import WorkerHeartbeat, utcnow

__all__ = ["alive", "heartbeats", "live_worker_count"]


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
