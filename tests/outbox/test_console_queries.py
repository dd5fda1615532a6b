"""The outbox queries behind the admin console's hour chart and dead list, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from herald.config import DispatchMode
from herald.outbox import (
    Delivery,
    DeliveryStatus,
    Notification,
    NotificationState,
    notifications_in_state,
    sent_per_minute,
)
from herald.tracker.db import Database
from herald.tracker.models import utcnow
from tests.support.beds import new_changeset
from tests.support.tracker import build_world


def test_sent_per_minute_counts_and_latency(any_db: Database):
    world = build_world(any_db)
    now = utcnow().replace(second=30, microsecond=0)
    first = new_changeset(any_db, world, DispatchMode.ASYNC)
    second = new_changeset(any_db, world, DispatchMode.ASYNC)
    with any_db.session() as s:
        s.execute(update(Notification).values(created_at=now - timedelta(minutes=10)))
        for cs, addresses, sent_at in (
            (first, ("a@example.org", "b@example.org"), now - timedelta(minutes=5)),  # 5 min after commit
            (second, ("c@example.org",), now),  # 10 min after
        ):
            for address in addresses:
                s.add(
                    Delivery(
                        changeset_id=cs,
                        address=address,
                        reason="cc",
                        status=DeliveryStatus.SENT,
                        sent_at=sent_at,
                    )
                )
        s.add(
            Delivery(changeset_id=second, address="d@example.org", reason="cc", status=DeliveryStatus.PENDING)
        )
        s.add(  # more than an hour ago: not in the chart
            Delivery(changeset_id=second, address="e@example.org", reason="cc", status=DeliveryStatus.SENT,
                     sent_at=now - timedelta(minutes=90))
        )  # fmt: skip
    with any_db.read() as s:
        minutes = sent_per_minute(s, 60, now=now)
    assert len(minutes) == 60 and minutes[-1].minute == now.replace(second=0)
    assert [m.minute for m in minutes] == sorted(m.minute for m in minutes)
    busy = {m.minute: m for m in minutes if m.sent}
    assert sorted(m.sent for m in busy.values()) == [1, 2]
    five = busy[(now - timedelta(minutes=5)).replace(second=0)]
    assert five.sent == 2 and abs(five.latency_avg - 300) < 1 and abs(five.latency_max - 300) < 1
    last = minutes[-1]
    assert last.sent == 1 and abs(last.latency_avg - 600) < 1
    assert sum(m.sent for m in minutes) == 3


def test_sent_per_minute_on_an_empty_ledger(any_db: Database):
    with any_db.read() as s:
        minutes = sent_per_minute(s, 5)
    assert [m.sent for m in minutes] == [0] * 5


def test_notifications_in_state(any_db: Database):
    world = build_world(any_db)
    ids = [new_changeset(any_db, world) for _ in range(3)]
    with any_db.session() as s:
        s.execute(
            update(Notification)
            .where(Notification.changeset_id.in_(ids[:2]))
            .values(state=NotificationState.DEAD, last_error="job dead-lettered: too many attempts")
        )
    with any_db.read() as s:
        dead = notifications_in_state(s, NotificationState.DEAD)
    assert sorted(n.changeset_id for n, _ in dead) == ids[:2]
    assert all(n.state is NotificationState.DEAD and count == 0 for n, count in dead)


def test_sent_per_minute_skips_the_minutes_a_caller_kept(sqlite_db: Database):
    with sqlite_db.read() as s:
        now = utcnow()
        assert len(sent_per_minute(s, 60, now, skip=58)) == 2
        assert sent_per_minute(s, 60, now, skip=58)[-1].minute == now.replace(second=0, microsecond=0)
        assert sent_per_minute(s, 60, now, skip=99) == []
