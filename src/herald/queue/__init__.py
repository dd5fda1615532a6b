"""herald's persistent job queue: the contract (:class:`Queue`) and its backends.

``make_queue(settings)`` gives the backend the settings ask for: Redis streams in production, or one SQL
table (SQLite by default, PostgreSQL) when no Redis is configured. The queue carries job ids only and
knows nothing of mail or the tracker.
"""

from __future__ import annotations

from herald.config import Settings
from herald.queue.base import DeadLetter, Job, Queue, QueueStats, decode_job
from herald.queue.errors import LeaseLost, MalformedJob, QueueError, QueueUnavailable

__all__ = [
    "DeadLetter",
    "Job",
    "LeaseLost",
    "MalformedJob",
    "Queue",
    "QueueError",
    "QueueStats",
    "QueueUnavailable",
    "decode_job",
    "make_queue",
]


def make_queue(settings: Settings) -> Queue:
    """The queue backend chosen by ``settings.queue_backend`` (``redis`` or ``sql``).

    No connection is made here; the first call does, and raises QueueUnavailable if it cannot.
    """
    backend = settings.queue_backend or ("redis" if settings.redis_configured else "sql")
    if backend == "redis":
        from herald.queue.redis_backend import RedisQueue

        return RedisQueue(settings)
    if backend == "sql":
        from herald.queue.sql_backend import SqlQueue

        return SqlQueue(settings)
    raise QueueError(f"queue_backend = {backend!r} is not allowed: expected redis or sql")
