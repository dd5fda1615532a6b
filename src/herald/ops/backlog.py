"""Figures about notifications owed, read from the outbox and the delivery ledger (the source of truth)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from herald.tracker.models import Delivery, Notification, NotificationState, utcnow

UNFINISHED = (
    NotificationState.PENDING,
    NotificationState.QUEUED,
    NotificationState.RUNNING,
    NotificationState.RETRYING,
)


@dataclass(frozen=True)
class Backlog:
    """How many notifications are in each state, and how old the oldest unfinished one is."""

    states: dict[str, int] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    oldest_unfinished_age: float = 0.0
    oldest_unfinished_changeset: int | None = None
    stale: int = 0

    @property
    def unfinished(self) -> int:
        return sum(self.states.get(s.value, 0) for s in UNFINISHED)


def _age(created: datetime, now: datetime) -> float:
    if created.tzinfo is None:  # SQLite hands back naive datetimes; herald writes UTC
        created = created.replace(tzinfo=now.tzinfo)
    return max(0.0, (now - created).total_seconds())


def read_backlog(session: Session, stale_after_seconds: float) -> Backlog:
    now = utcnow()
    states = {
        state.value: count
        for state, count in session.execute(
            select(Notification.state, func.count()).group_by(Notification.state)
        )
    }
    deliveries = {
        status.value: count
        for status, count in session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
    }
    oldest = session.execute(
        select(Notification.changeset_id, Notification.created_at)
        .where(Notification.state.in_(UNFINISHED))
        .order_by(Notification.created_at, Notification.changeset_id)
        .limit(1)
    ).first()
    cutoff_count = 0
    age, changeset = 0.0, None
    if oldest is not None:
        changeset, age = oldest[0], _age(oldest[1], now)
        cutoff = now - timedelta(seconds=stale_after_seconds)
        cutoff_count = (
            session.scalar(
                select(func.count())
                .select_from(Notification)
                .where(Notification.state.in_(UNFINISHED), Notification.created_at < cutoff)
            )
            or 0
        )
    return Backlog(states, deliveries, age, changeset, cutoff_count)
