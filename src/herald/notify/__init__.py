"""Who hears about a change and what each of them reads: dispatch policy, recipients, per-recipient
rendering (templates, i18n) and message building. Imports only ``herald.tracker`` and ``herald.config``."""

from herald.notify.dispatch import DispatchPolicy
from herald.notify.notifier import (
    NotificationPlan,
    Outgoing,
    PreparedChange,
    plan_notification,
    prepare_change,
)
from herald.notify.recipients import Recipient, compute_recipients
from herald.notify.rules import Reason
from herald.notify.unsubscribe import unsubscribe_token, verify_unsubscribe_token
from herald.notify.wire import Wire

__all__ = [
    "DispatchPolicy",
    "NotificationPlan",
    "Outgoing",
    "PreparedChange",
    "Reason",
    "Recipient",
    "Wire",
    "compute_recipients",
    "plan_notification",
    "prepare_change",
    "unsubscribe_token",
    "verify_unsubscribe_token",
]
