"""The delivery ledger: one row per (changeset, recipient), so that a retry sends only what is still owed.

A holder of the changeset's lock (see :mod:`herald.outbox.lock`) brings the ledger up to date with its plan
in the transaction that took the lock (:func:`sync`), then records outcomes in batches (:func:`record`),
each batch in a transaction that starts with the fence check. Rows already ``sent`` or ``failed`` are final:
no statement here changes them again.

Statements are prebuilt; per-recipient work is bind parameters of one executemany, never a statement built
at run time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from herald.outbox.tables import Delivery, DeliveryStatus

__all__ = ["DROPPED", "FINAL", "LedgerRow", "Outcome", "Tally", "record", "sync", "tally"]

T = Delivery.__table__
C = T.c
FINAL = frozenset({DeliveryStatus.SENT, DeliveryStatus.FAILED})
_REPLY_MAX = 2000
_CHUNK = 500  # rows per executemany: bounded statements whatever the recipient count


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """What the ledger says of one recipient."""

    status: DeliveryStatus
    attempts: int
    first_failed_at: datetime | None
    next_attempt_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def due(self, now: datetime) -> bool:
        """Whether this recipient is owed a send now (open, and its retry time, if any, has come)."""
        return not self.final and (self.next_attempt_at is None or self.next_attempt_at <= now)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One recipient's result from one send (or from a send that never happened: ``attempted`` False)."""

    address: str
    status: DeliveryStatus
    reply: str | None = None
    message_id: str | None = None
    next_attempt_at: datetime | None = None
    attempted: bool = True  # False: held back (the relay was down) — no attempt counted
    failed_at: datetime | None = None  # a transient failure starts the recipient's max-age clock


@dataclass(frozen=True, slots=True)
class Tally:
    """Counts of a changeset's ledger by status, and when the earliest open recipient is due."""

    counts: dict[DeliveryStatus, int]
    next_due: datetime | None  # the earliest retry time of an open row
    unscheduled: int = 0  # open rows with no retry time: due at once (never tried, or held back)

    @property
    def open(self) -> int:
        return sum(n for status, n in self.counts.items() if status not in FINAL)

    def __getitem__(self, status: DeliveryStatus) -> int:
        return self.counts.get(status, 0)


def _inserts() -> dict[str, Any]:
    values = {
        "changeset_id": bindparam("cs"),
        "address": bindparam("b_addr"),
        "user_id": bindparam("b_user"),
        "reason": bindparam("b_reason"),
        "status": DeliveryStatus.PENDING,
        "attempts": 0,
        "updated_at": bindparam("now"),
    }
    return {
        "postgresql": postgresql.insert(T).values(values).on_conflict_do_nothing(),
        "sqlite": sqlite.insert(T).values(values).on_conflict_do_nothing(),
        "default": insert(T).values(values),
    }


_INSERT = _inserts()
# Spelt out rather than NOT IN (...): an expanding IN cannot go into an executemany.
_OPEN = and_(C.status != DeliveryStatus.SENT, C.status != DeliveryStatus.FAILED)
_STATUSES = select(C.address, C.status, C.attempts, C.first_failed_at, C.next_attempt_at).where(
    C.changeset_id == bindparam("cs")
)
_RECORD = (
    update(T)
    .where(C.changeset_id == bindparam("cs"), C.address == bindparam("addr"), _OPEN)
    .values(
        status=bindparam("b_status"),
        attempts=C.attempts + bindparam("inc"),
        last_reply=func.coalesce(bindparam("reply"), C.last_reply),
        message_id=func.coalesce(bindparam("mid"), C.message_id),
        next_attempt_at=bindparam("next_at"),
        first_failed_at=func.coalesce(C.first_failed_at, bindparam("failed_at")),
        sent_at=bindparam("sent_at"),
        updated_at=bindparam("now"),
    )
)
_DROP = (
    update(T)
    .where(C.changeset_id == bindparam("cs"), C.address == bindparam("addr"), _OPEN)
    .values(
        status=DeliveryStatus.FAILED,
        last_reply=bindparam("reply"),
        next_attempt_at=None,
        updated_at=bindparam("now"),
    )
)
DROPPED = "dropped: no longer a recipient of this change (subscription or permissions changed)"
_TALLY = (
    select(C.status, func.count(), func.count(C.next_attempt_at), func.min(C.next_attempt_at))
    .where(C.changeset_id == bindparam("cs"))
    .group_by(C.status)
)


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def sync(
    conn: Connection,
    changeset_id: int,
    recipients: Sequence[tuple[str, int | None, str]],
    now: datetime,
) -> dict[str, LedgerRow]:
    """Make sure every planned ``(address, user_id, reason)`` has a row; return each address's row.

    Runs in the transaction that took the lock. Rows of earlier runs keep their status: a recipient already
    sent is never sent again, whatever the plan says now. An open row whose address is no longer planned
    (the person unsubscribed or lost access between two runs) is closed as failed, with why.
    """
    existing = {
        row.address: LedgerRow(row.status, row.attempts, row.first_failed_at, row.next_attempt_at)
        for row in conn.execute(_STATUSES, {"cs": changeset_id})
    }
    planned = {address for address, _, _ in recipients}
    dropped = [a for a, row in existing.items() if a not in planned and row.status not in FINAL]
    if dropped:
        conn.execute(_DROP, [{"cs": changeset_id, "addr": a, "reply": DROPPED, "now": now} for a in dropped])
        for a in dropped:
            existing[a] = LedgerRow(DeliveryStatus.FAILED, existing[a].attempts, existing[a].first_failed_at)
    missing = [
        {"cs": changeset_id, "b_addr": a, "b_user": u, "b_reason": str(r)[:32], "now": now}
        for a, u, r in recipients
        if a not in existing
    ]
    stmt = _INSERT.get(conn.dialect.name, _INSERT["default"])
    for chunk in _chunks(missing):
        conn.execute(stmt, list(chunk))
    for row in missing:
        existing[row["b_addr"]] = LedgerRow(DeliveryStatus.PENDING, 0, None)
    return existing


def record(conn: Connection, changeset_id: int, outcomes: Sequence[Outcome], now: datetime) -> None:
    """Write a batch of outcomes. Call it after :func:`herald.outbox.lock.guard` said yes, in the same
    transaction."""
    rows = [
        {
            "cs": changeset_id,
            "addr": o.address,
            "b_status": o.status,
            "inc": 1 if o.attempted else 0,
            "reply": None if o.reply is None else o.reply[:_REPLY_MAX],
            "mid": o.message_id,
            "next_at": o.next_attempt_at,
            "failed_at": o.failed_at,
            "sent_at": now if o.status is DeliveryStatus.SENT else None,
            "now": now,
        }
        for o in outcomes
    ]
    for chunk in _chunks(rows):
        conn.execute(_RECORD, list(chunk))


def tally(conn: Connection, changeset_id: int) -> Tally:
    """The ledger of ``changeset_id`` counted by status, with the earliest due time of an open row."""
    counts: dict[DeliveryStatus, int] = {}
    next_due: datetime | None = None
    unscheduled = 0
    for status, count, scheduled, due in conn.execute(_TALLY, {"cs": changeset_id}):
        counts[DeliveryStatus(status)] = int(count)
        if status in FINAL:
            continue
        unscheduled += int(count) - int(scheduled)
        if due is not None and (next_due is None or due < next_due):
            next_due = due
    return Tally(counts, next_due, unscheduled)
