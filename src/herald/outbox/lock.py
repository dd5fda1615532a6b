"""The per-changeset lock and its fencing token.

Acquiring is one conditional ``UPDATE … RETURNING`` ("running, held by me until T, fence + 1, unless
someone holds a lease that has not run out"), so two processes handed the same changeset (a job pushed
twice, a relay re-push racing a worker) never deliver it at the same time, and a crashed holder loses its
claim when its lease runs out — or at once, when the supervisor that saw it die calls
:func:`release_holders`.

Every later write of the holder starts with :func:`guard`, an ``UPDATE`` of the row that matches only while
the fence is still the holder's. On PostgreSQL that UPDATE also locks the row until the transaction ends,
and SQLite serializes writers, so a successor's acquisition and a late holder's writes can never
interleave: either the late writes committed first (and the successor's ledger sync sees them), or the
guard matches nothing and the late holder's transaction changes nothing.

Statements are built once, at import (Core with bind parameters), and run on a Connection in the caller's
transaction.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, literal, or_, select, update

from herald.outbox.tables import Notification, NotificationState

__all__ = [
    "Lease",
    "LockAttempt",
    "LockStatus",
    "acquire",
    "finish",
    "guard",
    "peek",
    "release_holders",
    "renew_all",
]

T = Notification.__table__
C = T.c
S = NotificationState


class LockStatus(enum.StrEnum):
    ACQUIRED = "acquired"
    GONE = "gone"  # no outbox row: the changeset was deleted
    FINISHED = "finished"  # already done: a duplicate job
    BUSY = "busy"  # someone else holds a lease that has not run out


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lock. ``fence`` is the token that guards every write; ``holder`` names it for people."""

    changeset_id: int
    fence: int
    holder: str
    seconds: float
    created_at: datetime  # when the change committed: the age shown in X-Herald-Delayed
    attempts: int  # delivery runs so far, this one included

    def until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.seconds)


@dataclass(frozen=True, slots=True)
class LockAttempt:
    status: LockStatus
    lease: Lease | None = None
    busy_until: datetime | None = None


_PEEK = select(C.state, C.lease_until).where(C.changeset_id == bindparam("cs"))

_ACQUIRE = (
    update(T)
    .where(
        C.changeset_id == bindparam("cs"),
        C.state != S.DONE,
        or_(C.state != S.RUNNING, C.lease_until.is_(None), C.lease_until <= bindparam("now")),
    )
    .values(
        state=S.RUNNING,
        worker=bindparam("holder"),
        lease_until=bindparam("until"),
        started_at=func.coalesce(C.started_at, bindparam("now")),
        attempts=C.attempts + 1,
        fence=C.fence + 1,
        next_attempt_at=None,
        job_id=func.coalesce(bindparam("b_job"), C.job_id),
        queued_at=func.coalesce(C.queued_at, bindparam("b_queued")),
    )
    .returning(C.fence, C.created_at, C.attempts)
)


def _held() -> Any:
    return and_(C.changeset_id == bindparam("cs"), C.fence == bindparam("b_fence"), C.state == S.RUNNING)


_GUARD = update(T).where(_held()).values(lease_until=bindparam("until")).returning(literal(1))
_RENEW = update(T).where(_held()).values(lease_until=bindparam("until"))
_FINISH = (
    update(T)
    .where(_held())
    .values(
        state=bindparam("b_state"),
        worker=None,
        lease_until=None,
        next_attempt_at=bindparam("next_at"),
        last_error=bindparam("error"),
        finished_at=bindparam("finished_at"),
    )
)
_RELEASE = (
    update(T)
    .where(
        C.state == S.RUNNING,
        C.worker.like(bindparam("prefix"), escape="\\"),
        C.lease_until > bindparam("now"),
    )
    .values(lease_until=bindparam("now"))
)


def _verdict(row: Any, now: datetime) -> LockAttempt | None:
    """Why ``row`` (state, lease_until) cannot be locked now, or None if it can."""
    if row is None:
        return LockAttempt(LockStatus.GONE)
    if row.state is S.DONE:
        return LockAttempt(LockStatus.FINISHED)
    if row.state is S.RUNNING and row.lease_until is not None and row.lease_until > now:
        return LockAttempt(LockStatus.BUSY, busy_until=row.lease_until)
    return None


def peek(conn: Connection, changeset_id: int, now: datetime) -> LockAttempt | None:
    """A look without locking: why the row could not be locked now, or None if it looks lockable."""
    return _verdict(conn.execute(_PEEK, {"cs": changeset_id}).first(), now)


def acquire(
    conn: Connection,
    changeset_id: int,
    holder: str,
    seconds: float,
    *,
    now: datetime,
    job_id: str | None = None,
    queued_at: datetime | None = None,
) -> LockAttempt:
    """Take the lock on ``changeset_id``'s notification for ``seconds``, raising its fence.

    Any state but ``done`` can be taken (``dead`` too: an admin requeued its job), ``running`` only once
    its lease ran out.
    """
    params = {
        "cs": changeset_id,
        "holder": holder[:200],
        "until": now + timedelta(seconds=seconds),
        "now": now,
        "b_job": job_id,
        "b_queued": queued_at,
    }
    row = conn.execute(_ACQUIRE, params).first()
    if row is not None:
        lease = Lease(changeset_id, row.fence, holder, seconds, row.created_at, row.attempts)
        return LockAttempt(LockStatus.ACQUIRED, lease=lease)
    return peek(conn, changeset_id, now) or LockAttempt(LockStatus.BUSY, busy_until=now)


def guard(conn: Connection, lease: Lease, now: datetime) -> bool:
    """Renew ``lease`` and check its fence, first in a transaction that writes for it.

    False if another holder took the lock: the caller must then write nothing (roll back).
    """
    params = {"cs": lease.changeset_id, "b_fence": lease.fence, "until": lease.until(now)}
    return conn.execute(_GUARD, params).first() is not None


def renew_all(conn: Connection, leases: Sequence[Lease], now: datetime) -> list[Lease]:
    """Push out every lease a process holds (its lease keeper calls this every third of a lease); return
    those still ours. One statement each, run every few seconds: the keeper must know which were renewed,
    so that a holder that lost its lock (it was frozen) does not believe it still has it."""
    renewed = []
    # In changeset order, as every writer that locks several rows in one transaction (the recorder too):
    # in different orders, two such transactions deadlock on PostgreSQL.
    for lease in sorted(leases, key=lambda lease: lease.changeset_id):
        params = {"cs": lease.changeset_id, "b_fence": lease.fence, "until": lease.until(now)}
        if conn.execute(_RENEW, params).rowcount == 1:  # type: ignore[attr-defined]
            renewed.append(lease)
    return renewed


def finish(
    conn: Connection,
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
    params = {
        "cs": lease.changeset_id,
        "b_fence": lease.fence,
        "b_state": state,
        "next_at": next_attempt_at,
        "error": None if last_error is None else last_error[:2000],
        "finished_at": now if state in (S.DONE, S.DEAD) else None,
    }
    return conn.execute(_FINISH, params).rowcount == 1  # type: ignore[attr-defined]


def release_holders(conn: Connection, holder_prefix: str, now: datetime) -> int:
    """End at once the leases of every holder whose name starts with ``holder_prefix`` (a process that
    is known to be dead); their rows can be acquired right away. The fence keeps the dead holder's late
    writes out should it not be so dead after all. Returns how many locks were released."""
    escaped = holder_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    result = conn.execute(_RELEASE, {"prefix": escaped + "%", "now": now})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
