"""The outbox: the notification owed for each changeset, the per-recipient delivery ledger, the
per-changeset lock with its fencing token, and the backlog queries. The only writer of those tables.
Imports ``tracker`` and ``config``.

- :mod:`~herald.outbox.records`: the row recorded with the change, queued/dead marks, the relay's view;
- :mod:`~herald.outbox.lock`: acquire, guard, renew, finish, release a dead process's locks;
- :mod:`~herald.outbox.ledger`: sync the ledger with a plan, record outcomes, tally;
- :mod:`~herald.outbox.backlog`: what ``ops`` and ``web`` read.
"""

from herald.outbox import ledger, lock, records
from herald.outbox.backlog import (
    UNFINISHED,
    Backlog,
    Health,
    Oldest,
    RecentDeliveries,
    notification_detail,
    read_backlog,
    read_health,
    recent_notifications,
)
from herald.outbox.tables import Delivery, DeliveryStatus, Notification, NotificationState

__all__ = [
    "UNFINISHED",
    "Backlog",
    "Delivery",
    "DeliveryStatus",
    "Health",
    "Notification",
    "NotificationState",
    "Oldest",
    "RecentDeliveries",
    "ledger",
    "lock",
    "notification_detail",
    "read_backlog",
    "read_health",
    "recent_notifications",
    "records",
]
