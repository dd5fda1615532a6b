"""Backend notifications: delivery with a ledger, the web's dispatcher, the worker loop, the outbox relay
and the supervisor of the worker pool. Imports ``queue``, ``notify``, ``mail``, ``tracker`` and ``config``.

- :class:`Deliverer` delivers one changeset (inline in a request, or in a worker);
- :func:`build_dispatcher` is what the web front end calls after each commit;
- :class:`Worker` is ``herald worker --id N``; :class:`Supervisor` is ``herald workers``;
- :class:`Relay` pushes outbox rows the queue missed.
"""

from herald.worker.delivery import Deliverer, DeliveryOutcome, Verdict
from herald.worker.dispatch import FrontEndDispatcher, build_dispatcher
from herald.worker.heartbeat import alive
from herald.worker.loop import Worker
from herald.worker.relay import Relay, RelayReport
from herald.worker.retry import RetryPolicy, backoff
from herald.worker.supervisor import Supervisor, workers_wanted

__all__ = [
    "Deliverer",
    "DeliveryOutcome",
    "FrontEndDispatcher",
    "Relay",
    "RelayReport",
    "RetryPolicy",
    "Supervisor",
    "Verdict",
    "Worker",
    "alive",
    "backoff",
    "build_dispatcher",
    "workers_wanted",
]
