"""Group commit: the outcomes and settles of every delivery of one process, written together.

A worker runs dozens of deliveries at once. If each wrote its own transactions, a process would spend its
time queueing for the database's write lock (SQLite has one writer) and paying a commit per change.
Instead every delivery hands this recorder the outcomes of each batch it sent (and, with its last batch,
the settle); one thread writes whatever has come in, lingering a millisecond for more, in one transaction,
and tells each delivery whether its fence still held. Under load one commit carries the outcomes of many
deliveries; when idle, a batch is committed within a couple of milliseconds of its last send.

Each delivery's writes start with the fence check (:func:`herald.outbox.lock.guard`): a fenced-off
holder's outcomes are dropped without touching anyone else's. A database error fails the whole
transaction, and every delivery of the batch gets it (each then gives its job back).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from herald.outbox import ledger, lock
from herald.outbox.ledger import Outcome, Tally
from herald.tracker.db import Database
from herald.tracker.models import utcnow

__all__ = ["FENCED", "Recorder"]

log = logging.getLogger("herald.recorder")

#: The result of a write whose holder was fenced off: nothing of it was written.
FENCED = object()
#: Writes per transaction at most, so one commit stays short however deep the backlog.
MAX_BATCH = 512
#: How long the recorder waits for more writes before it commits what it has.
LINGER_SECONDS = 0.001

Decide = Callable[[Connection, Tally, datetime], Any]


@dataclass
class _Item:
    lease: lock.Lease
    outcomes: Sequence[Outcome]
    decide: Decide | None
    future: Future[Any] = field(default_factory=Future)


class Recorder:
    """One writer thread for the deliveries of a process (see the module docstring).

    ``threaded=False`` writes each hand-over at once in the caller's thread, through the same code: for
    inline mode (one delivery per request, nothing to group) and tests; the futures come back done.
    """

    def __init__(
        self, db: Database, clock: Callable[[], datetime] = utcnow, *, threaded: bool = True
    ) -> None:
        self.db = db
        self._clock = clock
        self._items: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="outcome-recorder", daemon=True)
            self._thread.start()
        self.commits = 0
        self.writes = 0

    def record(self, lease: lock.Lease, outcomes: Sequence[Outcome]) -> Future[Any]:
        """Write ``outcomes`` of ``lease``'s delivery; the future says True, or :data:`FENCED`."""
        return self._hand_over(_Item(lease, outcomes, None))

    def settle(self, lease: lock.Lease, outcomes: Sequence[Outcome], decide: Decide) -> Future[Any]:
        """Write the last ``outcomes``, then call ``decide(conn, tally, now)`` in the same transaction (it
        finishes the lock); the future holds what ``decide`` returned, or :data:`FENCED`."""
        return self._hand_over(_Item(lease, outcomes, decide))

    def _hand_over(self, item: _Item) -> Future[Any]:
        if self._thread is None:
            self._commit([item])
        else:
            self._items.put(item)
        return item.future

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread is not None:
            self._items.put(None)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._items.get()
            if first is None:
                return
            try:
                if self._drain(first):
                    return
            except BaseException:  # never die: a dead recorder would leave every delivery waiting
                log.exception("the outcome recorder failed; it goes on")

    def _drain(self, first: _Item) -> bool:
        """Commit ``first`` and whatever else is queued; True if told to stop."""
        batch = [first]
        stop = False
        while len(batch) < MAX_BATCH:
            try:
                # Linger a moment: the deliveries finishing together share one commit.
                item = self._items.get(timeout=LINGER_SECONDS)
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        try:
            self._commit(batch)
        except BaseException as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            raise
        return stop

    def _commit(self, batch: list[_Item]) -> None:
        # One fence check and one executemany per delivery, however many of its outcomes came in.
        groups: dict[tuple[int, int], list[_Item]] = {}
        for item in batch:
            groups.setdefault((item.lease.changeset_id, item.lease.fence), []).append(item)
        results: list[tuple[_Item, Any]] = []
        try:
            with self.db.write() as conn:
                now = self._clock()
                # Rows locked in changeset order, as the lease keeper's renewal locks them: in different
                # orders the two transactions deadlock on PostgreSQL, and a recorder chosen as the victim
                # would leave mails already sent unrecorded (to be sent again).
                for _, items in sorted(groups.items()):
                    results.extend(self._group(conn, items, now))
        except Exception as exc:  # the transaction failed: nothing of the batch was written
            log.warning("could not record the outcomes of %d delivery write(s): %s", len(batch), exc)
            for item in batch:
                item.future.set_exception(exc)
            return
        self.commits += 1
        self.writes += len(batch)
        for item, value in results:
            item.future.set_result(value)

    @staticmethod
    def _group(conn: Connection, items: list[_Item], now: datetime) -> list[tuple[_Item, Any]]:
        lease = items[0].lease
        if not lock.guard(conn, lease, now):
            # A holder that was cut off (or frozen) and came back: its successor owns the row now.
            log.warning(
                "Notification: %d late write(s) for changeset_id=%d refused by the fence (fence %d was "
                "taken over)",
                sum(len(item.outcomes) for item in items) or len(items),
                lease.changeset_id,
                lease.fence,
            )
            return [(item, FENCED) for item in items]
        ledger.record(conn, lease.changeset_id, [o for item in items for o in item.outcomes], now)
        results: list[tuple[_Item, Any]] = []
        for item in items:
            value: Any = True
            if item.decide is not None:  # a settle comes after every outcome of its delivery
                value = item.decide(conn, ledger.tally(conn, lease.changeset_id), now)
            results.append((item, value))
        return results
