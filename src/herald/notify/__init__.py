"""Who hears about a change and what each of them reads: dispatch policy, recipients, per-recipient
rendering (templates, i18n) and message building. Imports only ``herald.tracker`` and ``herald.config``."""

from herald.notify.dispatch import DispatchPolicy
from herald.notify.notifier import NotificationPlan, Outgoing, plan_notification
from herald.notify.recipients import Recipient, compute_recipients
from herald.notify.rules import Reason
from herald.notify.unsubscribe import unsubscribe_token, verify_unsubscribe_token

__all__ = [
    "DispatchPolicy",
    "NotificationPlan",
    "Outgoing",
    "Reason",
    "Recipient",
    "compute_recipients",
    "plan_notification",
    "unsubscribe_token",
    "verify_unsubscribe_token",
]
