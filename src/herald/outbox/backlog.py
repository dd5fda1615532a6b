"""Figures about notifications owed, read from the outbox and the delivery ledger (the source of truth):
what ``herald check``, the metrics, the API and the admin page show."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, literal, select
from sqlalchemy.orm import Session

from herald.outbox.tables import Delivery, DeliveryStatus, Notification, NotificationState
from herald.tracker.models import utcnow

__all__ = [
    "COUNT_CAP",
    "RECENT_SAMPLE",
    "UNFINISHED",
    "Backlog",
    "Health",
    "MinuteFigures",
    "Oldest",
    "RecentDeliveries",
    "count_text",
    "notification_detail",
    "notifications_in_state",
    "read_backlog",
    "read_health",
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


def _oldest_per_state(
    session: Session, states: Sequence[NotificationState]
) -> list[tuple[int, datetime, str]]:
    """The oldest row of each state: one index probe each on ``(state, created_at)``, whatever the backlog
    (an ``IN`` over the states would read every unfinished row to sort them)."""
    found = []
    for state in states:
        row = session.execute(_OLDEST, {"state": state}).first()
        if row is not None:
            found.append((row[0], row[1], state.value))
    return found


_OLDEST = (
    select(Notification.changeset_id, Notification.created_at)
    .where(Notification.state == bindparam("state"))
    .order_by(Notification.created_at, Notification.changeset_id)
    .limit(1)
)


def _count_older(
    session: Session, states: Sequence[NotificationState], cutoff: datetime, cap: int | None = None
) -> int:
    """Rows of ``states`` created before ``cutoff``; with ``cap``, counting stops past it (cap + 1)."""
    query = select(literal(1)).where(Notification.state.in_(states), Notification.created_at < cutoff)
    if cap is not None:
        query = query.limit(cap + 1)
    return session.scalar(select(func.count()).select_from(query.subquery())) or 0


#: ``read_health`` counts at most this many rows of a state (a bounded index read whatever the backlog,
#: and whatever the history: ``done`` rows are never counted); a count past it reads "more than".
COUNT_CAP = 10_000

_COUNT_STATE = select(func.count()).select_from(
    select(literal(1)).where(Notification.state == bindparam("state")).limit(COUNT_CAP + 1).subquery()
)


def _capped_state_counts(session: Session) -> dict[str, int]:
    """How many rows in each state but ``done``, each count stopping past :data:`COUNT_CAP`."""
    counts = {}
    for state in NotificationState:
        if state is NotificationState.DONE:
            continue
        count = session.scalar(_COUNT_STATE, {"state": state}) or 0
        if count:
            counts[state.value] = count
    return counts


def _state_counts(session: Session) -> dict[str, int]:
    return {
        getattr(state, "value", state): count
        for state, count in session.execute(
            select(Notification.state, func.count()).group_by(Notification.state)
        )
    }


def read_backlog(session: Session, stale_after_seconds: float) -> Backlog:
    """Counts by state (notifications and deliveries), the oldest unfinished notification and how many are
    older than ``stale_after_seconds``. Counting deliveries reads the whole ledger: :func:`read_health` is
    what a frequent check should call."""
    now = utcnow()
    states = _state_counts(session)
    deliveries = {
        getattr(status, "value", status): count
        for status, count in session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
    }
    oldest = min(_oldest_per_state(session, UNFINISHED), key=lambda r: (r[1], r[0]), default=None)
    age, changeset, stale = 0.0, None, 0
    if oldest is not None:
        changeset, age = oldest[0], _age(oldest[1], now)
        stale = _count_older(session, UNFINISHED, now - timedelta(seconds=stale_after_seconds))
    return Backlog(states, deliveries, age, changeset, stale)


@dataclass(frozen=True)
class Oldest:
    """The oldest notification not yet delivered: which changeset, in which state, since when (seconds)."""

    changeset_id: int
    state: str
    age: float


@dataclass(frozen=True)
class RecentDeliveries:
    """What the ledger says about the latest sends (at most :data:`RECENT_SAMPLE` recipients touched in the
    last ``window`` seconds, newest first): how many went out, how many met a 4xx (``transient``: still
    retrying, with ``transient_reply`` the newest such reply) or a 5xx, and how long the sent ones took from
    the commit of their change (``late``: more than ``late_after`` seconds)."""

    window: float
    touched: int = 0
    sent: int = 0
    transient: int = 0
    permanent: int = 0
    transient_reply: str | None = None
    late: int = 0
    late_after: float = 0.0
    worst_latency: float = 0.0
    worst_changeset: int | None = None

    @property
    def transient_share(self) -> float:
        """4xx answers among the recipients that met an answer (sent, 4xx or 5xx)."""
        answered = self.sent + self.transient + self.permanent
        return self.transient / answered if answered else 0.0


@dataclass(frozen=True)
class Health:
    """Everything ``herald check`` reads from the outbox and the ledger, each figure from an index. Counts
    stop past :data:`COUNT_CAP` (``done`` rows are not counted at all): see :func:`count_text`."""

    states: dict[str, int]
    oldest: Oldest | None
    stale: int
    never_pushed: int
    oldest_pending_age: float
    new_dead: int
    recent: RecentDeliveries

    @property
    def unfinished(self) -> int:
        return sum(self.states.get(s.value, 0) for s in UNFINISHED)

    @property
    def dead(self) -> int:
        return self.states.get(NotificationState.DEAD.value, 0)


#: Most ledger rows one health read looks at: enough for a share, bounded whatever the throughput.
RECENT_SAMPLE = 1000

_RECENT = (
    select(
        Delivery.status, Delivery.last_reply, Delivery.sent_at, Notification.created_at, Delivery.changeset_id
    )
    .join(Notification, Notification.changeset_id == Delivery.changeset_id)
    .where(Delivery.updated_at >= bindparam("since"))
    .order_by(Delivery.updated_at.desc())
    .limit(RECENT_SAMPLE)
)


def _recent(session: Session, now: datetime, window: float, late_after: float) -> RecentDeliveries:
    sent = transient = permanent = late = touched = 0
    reply: str | None = None
    worst, worst_cs = 0.0, None
    for status, last_reply, sent_at, created_at, changeset_id in session.execute(
        _RECENT, {"since": now - timedelta(seconds=window)}
    ):
        touched += 1
        status = getattr(status, "value", status)
        if status == DeliveryStatus.SENT.value:
            sent += 1
            if sent_at is not None and created_at is not None:
                latency = _age(created_at, _aware(sent_at, now))
                if latency > late_after:
                    late += 1
                if latency > worst:
                    worst, worst_cs = latency, changeset_id
        elif status == DeliveryStatus.RETRYING.value and (last_reply or "").startswith("4"):
            transient += 1
            reply = reply or last_reply
        elif status == DeliveryStatus.FAILED.value and (last_reply or "").startswith("5"):
            permanent += 1
    return RecentDeliveries(
        window, touched, sent, transient, permanent, reply, late, late_after, worst, worst_cs
    )


def _aware(value: datetime, now: datetime) -> datetime:
    return value.replace(tzinfo=now.tzinfo) if value.tzinfo is None else value


def count_text(count: int) -> str:
    """A count of :func:`read_health` in words: ``"42"``, or ``"more than 10000"`` past the cap."""
    return f"more than {COUNT_CAP}" if count > COUNT_CAP else str(count)


def read_health(
    session: Session,
    *,
    stale_after_seconds: float,
    window_seconds: float,
    pending_grace_seconds: float,
    now: datetime | None = None,
) -> Health:
    """The outbox and ledger figures behind ``herald check``, in a few index reads (fast on any backlog):

    - counts by state, and the oldest undelivered notification (pending, queued, running or retrying);
    - ``stale``: undelivered notifications older than ``stale_after_seconds``;
    - ``never_pushed``: ``pending`` rows older than ``pending_grace_seconds`` (nobody handed them on);
    - ``new_dead``: notifications dead-lettered in the last ``window_seconds``;
    - the latest sends of the last ``window_seconds`` (:class:`RecentDeliveries`), late ones counted
      against ``stale_after_seconds``.
    """
    now = now or utcnow()
    states = _capped_state_counts(session)
    present = [s for s in UNFINISHED if states.get(s.value)]
    oldest_rows = _oldest_per_state(session, present)
    oldest = None
    stale = never_pushed = 0
    pending_age = 0.0
    if oldest_rows:
        cs, created, state = min(oldest_rows, key=lambda r: (r[1], r[0]))
        oldest = Oldest(cs, state, _age(created, now))
        if oldest.age > stale_after_seconds:
            stale = _count_older(session, present, now - timedelta(seconds=stale_after_seconds), COUNT_CAP)
        for _cs, created, state in oldest_rows:
            if state == NotificationState.PENDING.value:
                pending_age = _age(created, now)
        if pending_age > pending_grace_seconds:
            never_pushed = _count_older(
                session,
                [NotificationState.PENDING],
                now - timedelta(seconds=pending_grace_seconds),
                COUNT_CAP,
            )
    new_dead = 0
    if states.get(NotificationState.DEAD.value):
        new_dead = (
            session.scalar(
                select(func.count())
                .select_from(Notification)
                .where(
                    Notification.state == NotificationState.DEAD,
                    Notification.finished_at >= now - timedelta(seconds=window_seconds),
                )
            )
            or 0
        )
    recent = _recent(session, now, window_seconds, stale_after_seconds)
    return Health(states, oldest, stale, never_pushed, pending_age, new_dead, recent)


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
