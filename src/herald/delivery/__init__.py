"""The delivery engine: one delivery run (plan → lock → send → settle), the one retry policy, and the relay
gate that holds sending while the relay is down. Used by inline mode (``herald.web``) and the backend
workers (``herald.worker``). Imports ``outbox``, ``notify``, ``mail``, ``tracker`` and ``config``."""

from herald.delivery.gate import RelayGate
from herald.delivery.leases import HeldLeases
from herald.delivery.outcome import DeliveryOutcome, Verdict, count_sends
from herald.delivery.policy import RetryPolicy, backoff, format_age
from herald.delivery.run import Deliverer, Relay, reply_text

__all__ = [
    "Deliverer",
    "DeliveryOutcome",
    "HeldLeases",
    "Relay",
    "RelayGate",
    "RetryPolicy",
    "Verdict",
    "backoff",
    "count_sends",
    "format_age",
    "reply_text",
]
