"""The outbox relay: pushes the jobs the queue should hold but may not.

The outbox row committed with each changeset is the source of truth; the queue is the fast path. The relay
(run every second by the supervisor, see :mod:`herald.worker.supervisor`) closes the gaps between them:

- rows still ``pending`` a couple of seconds after their commit: the front end crashed between commit and
  push, the queue was down (the circuit breaker skipped the push), or an inline request died before it
  could deliver;
- ``queued``/``retrying`` rows whose time has come and gone: the job should have run by now, e.g. Redis
  restarted without persistence and forgot it, or an inline delivery is due for another round (inline
  retries go through the queue, like everything the request could not finish);
- ``running`` rows whose lease ran out: the holder died.

It is idempotent. A row keeps its job id, so re-pushing a job the queue still holds changes nothing (the
queue ignores an id it already has), and the lock and the ledger make even a duplicate job harmless. After
each push the row is looked at again only after :func:`requeue_after`, so a long backlog is not re-pushed
every second. The relay also marks rows whose job the queue dead-lettered as ``dead``, with the reason.

One relay runs per deployment, however many hosts: the supervisor that holds the ``relay`` leader lease
(:mod:`herald.worker.leader`) runs it and passes its ``guard``, which checks the lease's fencing token first
in every write transaction of a run, so a former leader that comes back from a network cut writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection

from herald.config import Settings
from herald.outbox import records
from herald.outbox.records import requeue_after
from herald.queue import Job, Queue, QueueError
from herald.tracker.db import Database
from herald.tracker.models import utcnow

__all__ = ["PENDING_GRACE_SECONDS", "Guard", "Relay", "RelayReport"]

log = logging.getLogger("herald.relay")

#: A pending row younger than this is still the front end's business (it is pushing it right now).
PENDING_GRACE_SECONDS = 2.0
#: A retrying row's job comes back by itself when due; the relay steps in only this much later.
DUE_SLACK_SECONDS = 1.0
#: Rows handled per run, so one run stays short whatever the backlog.
BATCH = 500
#: How often dead letters are matched against the outbox.
DEAD_SCAN_SECONDS = 30.0
_DEAD_SCAN_LIMIT = 1000


@dataclass(frozen=True)
class RelayReport:
    """What one relay run did."""

    pushed: int = 0
    failed: int = 0
    marked_dead: int = 0
    #: The run did nothing: the guard said this process does not lead the relay (any more).
    fenced: bool = False


#: Checks, first in a write transaction, that this process may still write for the relay.
Guard = Callable[[Connection], bool]


def _unguarded(_conn: Connection) -> bool:
    return True


class Relay:
    """Pushes outbox rows the queue missed (see the module docstring). Cheap to run every second."""

    def __init__(
        self,
        db: Database,
        queue: Queue,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.queue = queue
        self._recheck = timedelta(seconds=requeue_after(settings))
        self._clock = clock
        self._monotonic = monotonic
        self._next_dead_scan = 0.0

    def run_once(self, guard: Guard = _unguarded) -> RelayReport:
        """One pass. Raises QueueUnavailable (nothing was lost) when the queue cannot be reached.

        ``guard`` runs first in each write transaction; when it says no, the run stops and writes nothing.
        """
        now = self._clock()
        with self.db.write() as session:
            if not guard(session):
                return RelayReport(fenced=True)
            rows = records.relay_candidates(
                session, now, pending_grace=PENDING_GRACE_SECONDS, due_slack=DUE_SLACK_SECONDS, limit=BATCH
            )
            if rows:
                proposals = {r.changeset_id: Job.new(r.changeset_id).id for r in rows if r.job_id is None}
                job_ids = {r.changeset_id: r.job_id for r in rows if r.job_id is not None}
                if proposals:
                    job_ids.update(records.assign_job_ids(session, proposals))
        pushed: list[records.RelayRow] = []
        failed = 0
        try:
            for row in rows:
                job_id = job_ids.get(row.changeset_id)
                if job_id is None:  # deleted meanwhile
                    continue
                enqueued_at = (row.queued_at or now).timestamp()
                try:
                    self.queue.enqueue(Job(id=job_id, changeset_id=row.changeset_id, enqueued_at=enqueued_at))
                except QueueError as exc:
                    if exc.transient:
                        raise
                    failed += 1
                    log.error("relay could not push changeset_id=%d: %s", row.changeset_id, exc)
                    continue
                pushed.append(row)
        finally:
            if pushed:
                with self.db.write() as session:
                    # Fenced off meanwhile: the rows keep their old recheck time; the new leader re-pushes
                    # them, which the queue ignores (same job ids).
                    if guard(session):
                        records.mark_relayed(session, pushed, now=now, recheck_at=now + self._recheck)
                for row in pushed:
                    log.info(
                        "relay pushed changeset_id=%d job_id=%s (was %s)",
                        row.changeset_id,
                        job_ids[row.changeset_id],
                        row.state.value,
                    )
        dead = self._scan_dead(now, guard)
        return RelayReport(pushed=len(pushed), failed=failed, marked_dead=dead)

    def _scan_dead(self, now: datetime, guard: Guard) -> int:
        if self._monotonic() < self._next_dead_scan:
            return 0
        self._next_dead_scan = self._monotonic() + DEAD_SCAN_SECONDS
        letters = [d for d in self.queue.dead_letters(_DEAD_SCAN_LIMIT) if d.changeset_id is not None]
        if not letters:
            return 0
        marked = 0
        with self.db.write() as session:
            if not guard(session):
                return 0
            for letter in letters:
                assert letter.changeset_id is not None
                reason = f"job {letter.job_id} dead-lettered: {letter.reason}"
                if records.mark_dead(session, letter.changeset_id, reason, now=now, job_id=letter.job_id):
                    marked += 1
                    log.warning("changeset_id=%d marked dead: %s", letter.changeset_id, reason)
        return marked
