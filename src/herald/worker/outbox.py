"""The outbox row (:class:`~herald.tracker.models.Notification`) seen from the delivery side: a lock per
changeset with a lease, and the state changes around it.

::

    pending ──push──> queued ──lock──> running ──> done
       │                                 │ ▲
       └──── inline: lock in the request ┘ └── retrying (due: the queue's delayed retry, or the relay)
                                                  dead (the job was dead-lettered)

The lock is one conditional UPDATE ("running, held by me until T, unless someone else holds a lease that
has not run out"), so two processes handed the same changeset (a job pushed twice, a relay re-push racing
a worker) never deliver it at the same time, and a holder that crashed loses its claim when its lease
runs out. Every write that follows is fenced by the holder token: a holder whose lease was taken over
can no longer change the row.

``next_attempt_at`` is when something is next expected to happen to a row that is not running: a retry
falling due, or the moment the relay should look again at a queued row (see :mod:`herald.worker.relay`).

Statements are Core, on a :class:`~sqlalchemy.Connection` in the caller's transaction.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from herald.tracker.models import Notification, NotificationState

__all__ = [
    "Lease",
    "LockAttempt",
    "LockStatus",
    "RelayRow",
    "acquire",
    "assign_job_ids",
    "aware",
    "finish",
    "mark_dead",
    "mark_queued",
    "mark_relayed",
    "peek",
    "relay_candidates",
    "renew",
    "utcnow",
]

T = Notification.__table__
C = T.c
S = NotificationState

Executor = Connection | Session


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """A datetime read back from the database, as aware UTC (SQLite returns naive UTC)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class LockStatus(enum.StrEnum):
    ACQUIRED = "acquired"
    GONE = "gone"  # no outbox row: the changeset was deleted
    FINISHED = "finished"  # already done: a duplicate job
    BUSY = "busy"  # someone else holds a lease that has not run out


@dataclass(frozen=True)
class Lease:
    """A held lock: ``holder`` is the token written into the row, unique per acquisition."""

    changeset_id: int
    holder: str
    seconds: float

    def until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.seconds)


@dataclass(frozen=True)
class LockAttempt:
    status: LockStatus
    lease: Lease | None = None
    busy_until: datetime | None = None


def _verdict(row: Any, now: datetime) -> LockAttempt | None:
    """Why ``row`` (state, lease_until) cannot be locked now, or None if it can."""
    if row is None:
        return LockAttempt(LockStatus.GONE)
    if row.state is S.DONE:
        return LockAttempt(LockStatus.FINISHED)
    until = aware(row.lease_until)
    if row.state is S.RUNNING and until is not None and until > now:
        return LockAttempt(LockStatus.BUSY, busy_until=until)
    return None


def peek(ex: Executor, changeset_id: int, now: datetime) -> LockAttempt | None:
    """A look without locking: why the row could not be locked now, or None if it looks lockable."""
    return _verdict(
        ex.execute(select(C.state, C.lease_until).where(C.changeset_id == changeset_id)).first(), now
    )


def acquire(
    ex: Executor,
    changeset_id: int,
    holder: str,
    seconds: float,
    *,
    now: datetime,
    job_id: str | None = None,
    queued_at: datetime | None = None,
) -> LockAttempt:
    """Take the lock on ``changeset_id``'s notification for ``seconds``, in the caller's transaction.

    Any state but ``done`` can be taken (``dead`` too: an admin requeued its job), ``running`` only once
    its lease ran out. Counts an attempt and records the job that brought it.
    """
    lease = Lease(changeset_id, holder, seconds)
    values: dict[str, Any] = {
        "state": S.RUNNING,
        "worker": holder,
        "lease_until": lease.until(now),
        "started_at": func.coalesce(C.started_at, now),
        "attempts": C.attempts + 1,
        "next_attempt_at": None,
    }
    if job_id is not None:
        values["job_id"] = job_id
    if queued_at is not None:
        values["queued_at"] = func.coalesce(C.queued_at, queued_at)
    result = ex.execute(
        update(T)
        .where(
            C.changeset_id == changeset_id,
            C.state != S.DONE,
            or_(C.state != S.RUNNING, C.lease_until.is_(None), C.lease_until <= now),
        )
        .values(**values)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return LockAttempt(LockStatus.ACQUIRED, lease=lease)
    row = ex.execute(select(C.state, C.lease_until).where(C.changeset_id == changeset_id)).first()
    return _verdict(row, now) or LockAttempt(LockStatus.BUSY, busy_until=now)


def _held(lease: Lease) -> Any:
    return and_(C.changeset_id == lease.changeset_id, C.worker == lease.holder, C.state == S.RUNNING)


def renew(ex: Executor, lease: Lease, now: datetime) -> bool:
    """Push the lease out to ``now + seconds``; False if the lock was taken over meanwhile."""
    result = ex.execute(update(T).where(_held(lease)).values(lease_until=lease.until(now)))
    return result.rowcount == 1  # type: ignore[attr-defined]


def finish(
    ex: Executor,
    lease: Lease,
    state: NotificationState,
    *,
    now: datetime,
    next_attempt_at: datetime | None = None,
    last_error: str | None = None,
) -> bool:
    """Release the lock, leaving the row ``done``, ``retrying`` (due at ``next_attempt_at``) or ``dead``.

    False if the lock was taken over meanwhile (the row is then left to its new holder).
    """
    values: dict[str, Any] = {
        "state": state,
        "worker": None,
        "lease_until": None,
        "next_attempt_at": next_attempt_at,
        "last_error": last_error,
    }
    if state in (S.DONE, S.DEAD):
        values["finished_at"] = now
    result = ex.execute(update(T).where(_held(lease)).values(**values))
    return result.rowcount == 1  # type: ignore[attr-defined]


def mark_queued(
    ex: Executor, marks: Sequence[tuple[int, str, datetime]], *, recheck_after: timedelta
) -> None:
    """Jobs were pushed for ``(changeset_id, job_id, queued_at)``: record them on rows still ``pending``.
    A row that moved on meanwhile (a fast worker already runs it) is left alone."""
    if not marks:
        return
    ex.execute(
        update(T)
        .where(C.changeset_id == bindparam("cs"), C.state == S.PENDING)
        .values(
            state=S.QUEUED,
            job_id=bindparam("job"),
            queued_at=bindparam("at"),
            next_attempt_at=bindparam("recheck"),
        ),
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


# --- the relay's view --------------------------------------------------------------------------------


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
    return [RelayRow(r.changeset_id, r.state, r.job_id, aware(r.queued_at)) for r in rows]


def assign_job_ids(ex: Executor, proposals: dict[int, str]) -> dict[int, str]:
    """Give rows without a job id the proposed one; return every row's job id as it now stands.

    Two relays racing over a row end up with the same id, so their pushes collapse in the queue.
    """
    for changeset_id, job_id in proposals.items():
        ex.execute(update(T).where(C.changeset_id == changeset_id, C.job_id.is_(None)).values(job_id=job_id))
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
