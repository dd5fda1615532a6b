"""The process side of backend notifications: the worker loop and its concurrency, the supervisor of the
worker pool (with instant hand-back of a dead worker's jobs), the outbox relay and heartbeats. Imports
``delivery``, ``outbox``, ``queue``, ``mail``, ``tracker`` and ``config``.

- :class:`Worker` is ``herald worker --id N``; :class:`Supervisor` is ``herald workers``;
- :class:`Relay` pushes outbox rows the queue missed.
"""

from herald.worker.loop import Worker, connection_share
from herald.worker.relay import Relay, RelayReport
from herald.worker.supervisor import Supervisor, workers_wanted

__all__ = [
    "Relay",
    "RelayReport",
    "Supervisor",
    "Worker",
    "connection_share",
    "workers_wanted",
]
