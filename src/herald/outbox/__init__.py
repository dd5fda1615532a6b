"""The outbox: the notification owed for each changeset, the per-recipient delivery ledger, the
per-changeset lock with its fencing token, and the backlog queries. The only writer of those tables.
Imports ``tracker`` and ``config``.

- :mod:`~herald.outbox.records`: the row recorded with the change, queued/dead marks, the relay's view;
- :mod:`~herald.outbox.lock`: acquire, guard, renew, finish, release a dead process's locks;
- :mod:`~herald.outbox.ledger`: sync the ledger with a plan, record outcomes, tally;
- :mod:`~herald.outbox.backlog`: what ``ops`` and ``web`` read;
- :mod:`~herald.outbox.stats`: the delivery totals behind ``/metrics``, summed over every process.
"""

from herald.outbox import ledger, lock, records, stats
from herald.outbox.backlog import (
    UNFINISHED,
    Backlog,
    Health,
    MinuteFigures,
    Oldest,
    RecentDeliveries,
    notification_detail,
    notifications_in_state,
    read_backlog,
    read_health,
    recent_notifications,
    sent_per_minute,
)
from herald.outbox.tables import Delivery, DeliveryCounter, DeliveryStatus, Notification, NotificationState

__all__ = [
    "UNFINISHED",
    "Backlog",
    "Delivery",
    "DeliveryCounter",
    "DeliveryStatus",
    "Health",
    "MinuteFigures",
    "Notification",
    "NotificationState",
    "Oldest",
    "RecentDeliveries",
    "ledger",
    "lock",
    "notification_detail",
    "notifications_in_state",
    "read_backlog",
    "read_health",
    "recent_notifications",
    "records",
    "sent_per_minute",
    "stats",
]
