"""herald's queue errors: every backend failure is translated into one of these at the boundary.

Callers decide on the type alone: :class:`QueueUnavailable` is transient (back off and try again),
:class:`MalformedJob` and :class:`LeaseLost` are about one job, and a bare :class:`QueueError` is a bug or a
misconfiguration that retrying will not fix.
"""

from __future__ import annotations

__all__ = ["LeaseLost", "MalformedJob", "QueueError", "QueueUnavailable"]


class QueueError(Exception):
    """Something went wrong in the queue; retrying the same call will not help."""

    transient: bool = False


class QueueUnavailable(QueueError, ConnectionError):
    """The queue's server cannot be reached right now (refused, timed out, restarting, bad credentials).

    Transient: the worker should back off and call again; nothing was lost, because the tracker's outbox
    re-pushes any job the queue did not keep.
    """

    transient = True


class MalformedJob(QueueError, ValueError):
    """A payload is not a valid herald job; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LeaseLost(QueueError):
    """The worker's lease on a job expired and the job went back to the queue (or to another worker).

    Raised by ``extend``: the caller should stop working on the job, since someone else will run it.
    """
