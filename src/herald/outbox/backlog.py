"""Figures about notifications owed, read from the outbox and the delivery ledger (the source of truth):
what ``herald check``, the metrics, the API and the admin page show."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from herald.outbox.tables import Delivery, Notification, NotificationState
from herald.tracker.models import utcnow

__all__ = [
    "UNFINISHED",
    "Backlog",
    "MinuteFigures",
    "notification_detail",
    "notifications_in_state",
    "read_backlog",
    "recent_notifications",
    "sent_per_minute",
]

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


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _detail(n: Notification) -> dict[str, Any]:
    return {
        "changeset_id": n.changeset_id,
        "mode": n.mode.value,
        "state": n.state.value,
        "job_id": n.job_id,
        "attempts": n.attempts,
        "fence": n.fence,
        "holder": n.worker,
        "created_at": _ts(n.created_at),
        "queued_at": _ts(n.queued_at),
        "started_at": _ts(n.started_at),
        "finished_at": _ts(n.finished_at),
        "next_attempt_at": _ts(n.next_attempt_at),
        "last_error": n.last_error,
        "deliveries": [
            {
                "address": d.address,
                "user_id": d.user_id,
                "reason": d.reason,
                "status": d.status.value,
                "attempts": d.attempts,
                "message_id": d.message_id,
                "last_reply": d.last_reply,
                "updated_at": _ts(d.updated_at),
                "sent_at": _ts(d.sent_at),
                "next_attempt_at": _ts(d.next_attempt_at),
            }
            for d in n.deliveries
        ],
    }


def notification_detail(session: Session, changeset_id: int) -> dict[str, Any] | None:
    """The notification of ``changeset_id`` and each recipient's delivery, as plain values; None if the
    changeset owes none."""
    n = session.get(Notification, changeset_id)
    return None if n is None else _detail(n)


def recent_notifications(session: Session, limit: int = 50) -> list[tuple[Notification, int]]:
    """The newest notifications with their recipient counts, newest first."""
    return _with_counts(session, select(Notification), limit)


def _with_counts(session: Session, query: Any, limit: int) -> list[tuple[Notification, int]]:
    """The ``limit`` newest rows of ``query``, each with its recipient count: the rows are picked first,
    then only their deliveries are counted (not the whole ledger's)."""
    rows = list(
        session.scalars(
            query.order_by(Notification.created_at.desc(), Notification.changeset_id.desc()).limit(limit)
        )
    )
    if not rows:
        return []
    counts = dict(
        session.execute(  # type: ignore[arg-type]
            select(Delivery.changeset_id, func.count())
            .where(Delivery.changeset_id.in_([n.changeset_id for n in rows]))
            .group_by(Delivery.changeset_id)
        ).all()
    )
    return [(n, int(counts.get(n.changeset_id, 0))) for n in rows]


@dataclass(frozen=True)
class MinuteFigures:
    """One minute of the ledger: mails sent, and the enqueue → sent latency of those mails."""

    minute: datetime  # the minute's start, UTC
    sent: int
    latency_avg: float  # seconds from the change's commit (the outbox row) to the relay's acceptance
    latency_max: float


def _epoch(column: Any, dialect: str) -> Any:
    """Seconds since 1970 of a datetime column, on SQLite and PostgreSQL."""
    if dialect == "sqlite":
        return (func.julianday(column) - 2440587.5) * 86400.0
    return func.extract("epoch", column)


def sent_per_minute(
    session: Session, minutes: int = 60, now: datetime | None = None, *, skip: int = 0
) -> list[MinuteFigures]:
    """Mails sent in each of the last ``minutes`` minutes (oldest first, empty minutes included), with the
    average and longest enqueue → sent latency. One grouped query over the ``sent_at`` index.

    ``skip`` leaves out the oldest ``skip`` minutes (a caller that keeps the closed minutes it already
    read asks only for the newest ones): the list then has ``minutes - skip`` entries.
    """
    now = now or utcnow()
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    first_minute = start + timedelta(minutes=max(0, min(skip, minutes)))
    dialect = session.get_bind().dialect.name
    sent = _epoch(Delivery.sent_at, dialect)
    latency = sent - _epoch(Notification.created_at, dialect)
    bucket = func.floor(sent / 60.0)
    rows = session.execute(
        select(bucket, func.count(), func.avg(latency), func.max(latency))
        .select_from(Delivery)
        .join(Notification, Notification.changeset_id == Delivery.changeset_id)
        .where(Delivery.sent_at >= first_minute, Delivery.sent_at <= now)
        .group_by(bucket)
    ).all()
    by_minute = {int(b): (int(n), float(avg or 0.0), float(most or 0.0)) for b, n, avg, most in rows}
    first = int(first_minute.timestamp() // 60)
    out = []
    for i in range(minutes - max(0, min(skip, minutes))):
        n, avg, most = by_minute.get(first + i, (0, 0.0, 0.0))
        out.append(MinuteFigures(first_minute + timedelta(minutes=i), n, max(0.0, avg), max(0.0, most)))
    return out


def notifications_in_state(
    session: Session, state: NotificationState, limit: int = 50
) -> list[tuple[Notification, int]]:
    """Notifications in ``state`` (e.g. dead), the newest first, with their recipient counts."""
    return _with_counts(session, select(Notification).where(Notification.state == state), limit)
