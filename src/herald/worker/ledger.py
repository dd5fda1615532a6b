"""The delivery ledger: one :class:`~herald.tracker.models.Delivery` row per (changeset, address).

It is what keeps a retried job from mailing anyone twice: a recipient marked ``sent`` or ``failed`` is
never sent to again, and each outcome is committed right after its send, so a crash can repeat at most the
one message that was in flight. Statements are Core, on a connection in the caller's transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from herald.notify.notifier import NotificationPlan
from herald.tracker.models import Delivery, DeliveryStatus

__all__ = ["DROPPED", "FINAL", "begin_attempt", "counts", "defer", "record", "schedule", "sync"]

T = Delivery.__table__
C = T.c
FINAL = frozenset({DeliveryStatus.SENT, DeliveryStatus.FAILED})
DROPPED = "dropped: no longer a recipient of this change"
_REPLY_MAX = 2000


def sync(conn: Connection, plan: NotificationPlan, now: datetime) -> dict[str, DeliveryStatus]:
    """Make sure every recipient of ``plan`` has a row; return each planned address's status.

    Rows of addresses the plan no longer lists (someone unsubscribed or lost access between two
    attempts) are closed as failed, with why, if they were still open.
    """
    if plan.outgoing:
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(
            insert(T)
            .values(
                [
                    {
                        "changeset_id": plan.changeset_id,
                        "address": out.address,
                        "user_id": out.user_id,
                        "reason": str(out.reason),
                        "status": DeliveryStatus.PENDING,
                        "attempts": 0,
                        "message_id": out.message_id,
                        "updated_at": now,
                    }
                    for out in plan.outgoing
                ]
            )
            .on_conflict_do_nothing(index_elements=[C.changeset_id, C.address])
        )
    planned = {out.address for out in plan.outgoing}
    statuses: dict[str, DeliveryStatus] = {}
    for address, status in conn.execute(
        select(C.address, C.status).where(C.changeset_id == plan.changeset_id)
    ):
        if address in planned:
            statuses[address] = status
        elif status not in FINAL:
            _set(conn, plan.changeset_id, address, now, status=DeliveryStatus.FAILED, last_reply=DROPPED)
    return statuses


def begin_attempt(conn: Connection, changeset_id: int, address: str, now: datetime) -> int | None:
    """Count one more attempt for a recipient about to be sent; None if it is sent or failed already
    (another holder finished it meanwhile)."""
    row = conn.execute(
        select(C.status, C.attempts).where(C.changeset_id == changeset_id, C.address == address)
    ).first()
    if row is None or row.status in FINAL:
        return None
    attempts = row.attempts + 1
    _set(conn, changeset_id, address, now, attempts=attempts)
    return attempts


def record(
    conn: Connection,
    changeset_id: int,
    address: str,
    status: DeliveryStatus,
    *,
    now: datetime,
    reply: str | None,
    message_id: str | None = None,
) -> None:
    """One recipient's outcome."""
    values: dict[str, Any] = {"status": status, "last_reply": _short(reply), "next_attempt_at": None}
    if message_id is not None:
        values["message_id"] = message_id
    _set(conn, changeset_id, address, now, **values)


def defer(conn: Connection, changeset_id: int, addresses: Iterable[str], reply: str, now: datetime) -> None:
    """Recipients not tried this round because the server is unreachable: retrying, no attempt counted."""
    addresses = list(addresses)
    if addresses:
        conn.execute(
            update(T)
            .where(C.changeset_id == changeset_id, C.address.in_(addresses), C.status.not_in(FINAL))
            .values(status=DeliveryStatus.RETRYING, last_reply=_short(reply), updated_at=now)
        )


def schedule(conn: Connection, changeset_id: int, due: datetime | None) -> None:
    """Every recipient still retrying is tried again at ``due`` (one schedule per notification)."""
    conn.execute(
        update(T)
        .where(C.changeset_id == changeset_id, C.status == DeliveryStatus.RETRYING)
        .values(next_attempt_at=due)
    )


def counts(conn: Connection, changeset_id: int, addresses: Iterable[str]) -> tuple[Counter[str], int]:
    """(statuses of ``addresses``, highest attempt count among those still open)."""
    wanted = set(addresses)
    tally: Counter[str] = Counter()
    most = 0
    for address, status, attempts in conn.execute(
        select(C.address, C.status, C.attempts).where(C.changeset_id == changeset_id)
    ):
        if address not in wanted:
            continue
        tally[str(status)] += 1
        if status not in FINAL:
            most = max(most, attempts)
    return tally, most


def _set(conn: Connection, changeset_id: int, address: str, now: datetime, **values: Any) -> None:
    conn.execute(
        update(T).where(C.changeset_id == changeset_id, C.address == address).values(updated_at=now, **values)
    )


def _short(text: str | None) -> str | None:
    return None if text is None else text[:_REPLY_MAX]
