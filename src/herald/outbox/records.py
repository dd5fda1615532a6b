"""The outbox row's life outside the lock: recorded with its change, marked queued when its job is pushed,
marked dead when its job is dead-lettered, and the relay's view of rows the queue may have missed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from herald.config import DispatchMode, Settings
from herald.outbox.tables import Notification, NotificationState

__all__ = [
    "RelayRow",
    "assign_job_ids",
    "mark_dead",
    "mark_queued",
    "mark_relayed",
    "record",
    "relay_candidates",
    "requeue_after",
]

T = Notification.__table__
C = T.c
S = NotificationState
Executor = Connection | Session


def requeue_after(settings: Settings) -> float:
    """How long a queued row may go without progress before the relay pushes its job again."""
    return max(10.0, settings.lease_seconds)


def record(session: Session, changeset_id: int, mode: DispatchMode, created_at: datetime) -> None:
    """Record that ``changeset_id`` owes a notification, in the transaction that writes the change."""
    session.add(Notification(changeset_id=changeset_id, mode=mode, created_at=created_at))


_MARK_QUEUED = (
    update(T)
    .where(C.changeset_id == bindparam("cs"), C.state == S.PENDING)
    .values(
        state=S.QUEUED,
        job_id=bindparam("job"),
        queued_at=bindparam("at"),
        next_attempt_at=bindparam("recheck"),
    )
)


def mark_queued(
    ex: Executor, marks: Sequence[tuple[int, str, datetime]], *, recheck_after: timedelta
) -> None:
    """Jobs were pushed for ``(changeset_id, job_id, queued_at)``: record them on rows still ``pending``.
    A row that moved on meanwhile (a fast worker already runs it) is left alone."""
    if marks:
        ex.execute(
            _MARK_QUEUED,
            [{"cs": cs, "job": job, "at": at, "recheck": at + recheck_after} for cs, job, at in marks],
        )


def mark_dead(
    ex: Executor, changeset_id: int, reason: str, *, now: datetime, job_id: str | None = None
) -> bool:
    """The queue gave up on the row's job: ``dead`` with the reason (unless it is done or being run)."""
    conditions = [C.changeset_id == changeset_id, C.state.in_((S.PENDING, S.QUEUED, S.RETRYING))]
    if job_id is not None:
        conditions.append(C.job_id == job_id)
    result = ex.execute(
        update(T)
        .where(*conditions)
        .values(state=S.DEAD, finished_at=now, last_error=reason[:2000], next_attempt_at=None)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RelayRow:
    """A row the queue may have missed, as the relay saw it."""

    changeset_id: int
    state: NotificationState
    job_id: str | None
    queued_at: datetime | None


def relay_candidates(
    ex: Executor, now: datetime, *, pending_grace: float, due_slack: float, limit: int
) -> list[RelayRow]:
    """Rows that should be in the queue but may not be, oldest first:

    - ``pending`` for longer than ``pending_grace`` (the front end crashed between commit and push, the
      queue was down, or an inline request died before delivering);
    - ``queued``/``retrying`` whose ``next_attempt_at`` passed ``due_slack`` ago (the job should have run
      by now: Redis may have lost it, or an inline retry is due and has no job yet);
    - ``running`` with a lease that ran out (the holder died: an inline request, or a worker whose job the
      queue lost).
    """
    recheck_due = or_(C.next_attempt_at.is_(None), C.next_attempt_at <= now)
    rows = ex.execute(
        select(C.changeset_id, C.state, C.job_id, C.queued_at)
        .where(
            or_(
                and_(
                    C.state == S.PENDING, C.created_at <= now - timedelta(seconds=pending_grace), recheck_due
                ),
                and_(
                    C.state.in_((S.QUEUED, S.RETRYING)),
                    or_(C.next_attempt_at.is_(None), C.next_attempt_at <= now - timedelta(seconds=due_slack)),
                ),
                and_(C.state == S.RUNNING, or_(C.lease_until.is_(None), C.lease_until <= now), recheck_due),
            )
        )
        .order_by(C.created_at, C.changeset_id)
        .limit(limit)
    ).all()
    return [RelayRow(r.changeset_id, r.state, r.job_id, r.queued_at) for r in rows]


def assign_job_ids(ex: Executor, proposals: dict[int, str]) -> dict[int, str]:
    """Give rows without a job id the proposed one; return every row's job id as it now stands.

    Two relays racing over a row end up with the same id, so their pushes collapse in the queue.
    """
    if not proposals:
        return {}
    ex.execute(
        update(T)
        .where(C.changeset_id == bindparam("cs"), C.job_id.is_(None))
        .values(job_id=bindparam("job")),
        [{"cs": cs, "job": job} for cs, job in proposals.items()],
    )
    rows = ex.execute(select(C.changeset_id, C.job_id).where(C.changeset_id.in_(list(proposals))))
    return {cs: job_id for cs, job_id in rows if job_id is not None}


def mark_relayed(ex: Executor, rows: Iterable[RelayRow], *, now: datetime, recheck_at: datetime) -> None:
    """After a push: ``pending`` rows become ``queued``; every row is looked at again at ``recheck_at``."""
    for row in rows:
        condition = [C.changeset_id == row.changeset_id, C.state == row.state]
        if row.state is S.RUNNING:
            condition.append(or_(C.lease_until.is_(None), C.lease_until <= now))
        ex.execute(
            update(T)
            .where(*condition)
            .values(
                state=S.QUEUED if row.state is S.PENDING else row.state,
                queued_at=func.coalesce(C.queued_at, now),
                next_attempt_at=recheck_at,
            )
        )
