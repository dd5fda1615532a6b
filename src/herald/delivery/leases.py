"""The locks a process holds right now, so that one lease keeper renews them all in one statement."""

from __future__ import annotations

import threading

from herald.outbox.lock import Lease

__all__ = ["HeldLeases"]


class HeldLeases:
    """A thread-safe set of the :class:`~herald.outbox.lock.Lease` objects a process holds."""

    def __init__(self) -> None:
        self._leases: dict[tuple[int, int], Lease] = {}
        self._lock = threading.Lock()

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._leases[(lease.changeset_id, lease.fence)] = lease

    def discard(self, lease: Lease) -> None:
        with self._lock:
            self._leases.pop((lease.changeset_id, lease.fence), None)

    def snapshot(self) -> list[Lease]:
        with self._lock:
            return list(self._leases.values())

    def __len__(self) -> int:
        return len(self._leases)
