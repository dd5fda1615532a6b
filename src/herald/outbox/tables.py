"""The outbox's two tables: the notification owed for each changeset, and one ledger row per recipient.

They live in the tracker database (the outbox row must commit in the change's own transaction) and on the
tracker's declarative metadata, but only :mod:`herald.outbox` writes them.

::

    pending ──push──> queued ──lock──> running ──> done
       │                                 │ ▲
       └──── inline: lock in the request ┘ └── retrying (due at next_attempt_at)
                                                  dead (its job was dead-lettered)

``fence`` is the fencing token of the per-changeset lock: it rises by one on every acquisition, and every
write a holder makes afterwards (ledger outcomes, renewals, the final settle) is guarded by it, so a holder
presumed dead that wakes up late changes nothing.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from herald.config import DispatchMode
from herald.tracker.models import Base, UTCDateTime, enum_column, utcnow

__all__ = ["Delivery", "DeliveryCounter", "DeliveryStatus", "Notification", "NotificationState"]


class NotificationState(enum.StrEnum):
    PENDING = "pending"  # committed, not yet handed to a worker or run inline
    QUEUED = "queued"  # pushed to the queue
    RUNNING = "running"  # locked by a holder (fence) until lease_until
    DONE = "done"  # every recipient sent or failed for good
    RETRYING = "retrying"  # some recipients wait, due at next_attempt_at
    DEAD = "dead"  # its job was dead-lettered


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    RETRYING = "retrying"  # a transient failure for this recipient; due at next_attempt_at
    FAILED = "failed"  # permanent failure (5xx) or past delivery_max_age, reply recorded


class Notification(Base):
    """The outbox row, committed with its changeset: the source of truth that a notification is owed."""

    __tablename__ = "notifications"
    # (state, created_at): the oldest row of a state and the count of rows older than a cutoff are index
    # reads, so ``herald check`` stays fast on any backlog.
    __table_args__ = (Index("ix_notifications_state_created", "state", "created_at"),)

    changeset_id: Mapped[int] = mapped_column(
        ForeignKey("changesets.id", ondelete="CASCADE"), primary_key=True
    )
    mode: Mapped[DispatchMode] = mapped_column(enum_column(DispatchMode))
    state: Mapped[NotificationState] = mapped_column(
        enum_column(NotificationState), default=NotificationState.PENDING
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # delivery runs (lock acquisitions)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The lock: ``worker`` names the holder (for people), ``fence`` is what guards its writes.
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    fence: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    deliveries: Mapped[list[Delivery]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="Delivery.id"
    )


class Delivery(Base):
    """One (changeset, recipient) outcome: the ledger that keeps a retry from mailing anyone twice."""

    __tablename__ = "deliveries"
    # sent_at: the console's throughput and latency over the last hour read a range of it; updated_at: the
    # latest sends (``herald check``'s 4xx share and late mail) without reading the ledger.
    __table_args__ = (
        UniqueConstraint("changeset_id", "address"),
        Index("ix_deliveries_sent_at", "sent_at"),
        Index("ix_deliveries_updated_at", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    changeset_id: Mapped[int] = mapped_column(
        ForeignKey("notifications.changeset_id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(254))
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(String(32))
    status: Mapped[DeliveryStatus] = mapped_column(
        enum_column(DeliveryStatus), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # sends that reached this recipient
    message_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    last_reply: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # When this recipient first failed transiently: delivery_max_age is counted from here, so an outage of
    # the relay itself (which never reaches a recipient) burns nobody's clock.
    first_failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DeliveryCounter(Base):
    """One series of the delivery statistics (:mod:`herald.outbox.stats`): a total that only grows, summed
    over every process on every host that delivers. ``labels`` is the series' labels, ``k=v`` joined by
    commas in key order (empty for none)."""

    __tablename__ = "delivery_counters"

    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    labels: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    value: Mapped[float] = mapped_column(Float, default=0.0)
