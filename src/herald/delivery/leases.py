"""The locks a process holds right now, so that one lease keeper renews them all in one statement, and
how long each is known to be ours.

A process frozen past its lease (SIGSTOP, a VM paused, a long GC) wakes up to sends it must no longer
make: another holder has taken the changeset over and sent them already. The fencing token keeps its
writes out, and this keeps its sends out: each lease carries a local deadline (monotonic clock), pushed
out whenever the lock is renewed; a delivery sends nothing once its deadline has passed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from herald.outbox.lock import Lease

__all__ = ["HeldLeases"]

#: A lease counts as ours until this long before its end: the renewal may be on its way.
MARGIN_SECONDS = 0.5


class HeldLeases:
    """A thread-safe set of the :class:`~herald.outbox.lock.Lease` objects a process holds, each with the
    monotonic time until which it is surely still ours."""

    def __init__(self) -> None:
        self._leases: dict[tuple[int, int], tuple[Lease, float]] = {}
        self._lock = threading.Lock()

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._leases[(lease.changeset_id, lease.fence)] = (lease, self._deadline(lease))

    def discard(self, lease: Lease) -> None:
        with self._lock:
            self._leases.pop((lease.changeset_id, lease.fence), None)

    def snapshot(self) -> list[Lease]:
        with self._lock:
            return [lease for lease, _ in self._leases.values()]

    def renewed(self, leases: Iterable[Lease], since: float) -> None:
        """``leases`` were renewed by a statement issued at monotonic time ``since``."""
        with self._lock:
            for lease in leases:
                key = (lease.changeset_id, lease.fence)
                if key in self._leases:
                    self._leases[key] = (lease, since + lease.seconds - MARGIN_SECONDS)

    def alive(self, lease: Lease) -> bool:
        """Whether ``lease`` is surely still ours (a lease we never held, or dropped, is not)."""
        with self._lock:
            held = self._leases.get((lease.changeset_id, lease.fence))
        return held is not None and time.monotonic() < held[1]

    @staticmethod
    def _deadline(lease: Lease) -> float:
        return time.monotonic() + lease.seconds - MARGIN_SECONDS

    def __len__(self) -> int:
        return len(self._leases)
