"""What the web front end does with a changeset once it has committed: deliver inline, or push a job.

``build_dispatcher(settings, db)`` is the factory :func:`herald.web.create_app` uses. The async path costs
the request one queue push (a single round trip to Redis), because it is measured against notifications
off:

- recording the push on the outbox row (``queued``, job id, time) is done by a background thread, in
  batches: it is bookkeeping for the status page and the relay, not what makes delivery safe, and a
  database write on the request path would cost more than the push (with SQLite it also waits for the
  workers' write lock). If the process dies before a mark is written, the row stays ``pending`` and the
  relay pushes it again: a duplicate job, which the per-changeset lock and the ledger make harmless;
- the queue is reached through a client with short timeouts, and a circuit breaker skips pushes for a
  second after a failure, so a Redis outage costs requests nothing but a log line now and then;
- a push that fails or is skipped leaves the outbox row ``pending``: the relay pushes it once the queue is
  back. The row is never delivered inline instead (that would put SMTP on the request path exactly when
  the system is struggling).

Inline delivery runs in the request thread after the commit, through the same delivery run as the workers
(its recipients sent in parallel over a small pool of relay connections); whatever happens is logged and
recorded in the ledger, never raised: a mail failure must not fail a change that is already committed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from herald.config import DispatchMode, Settings
from herald.delivery import Deliverer, Verdict, count_sends
from herald.delivery.run import Relay
from herald.mail import make_pool
from herald.notify.dispatch import DispatchPolicy
from herald.outbox import records, stats
from herald.outbox.records import requeue_after
from herald.queue import Job, Queue, QueueError, make_queue
from herald.tracker.db import Database

__all__ = ["CircuitBreaker", "FrontEndDispatcher", "QueuedMarks", "build_dispatcher"]

log = logging.getLogger("herald.dispatch")

#: After a failed push, requests skip the queue for this long (their rows stay pending for the relay).
BREAKER_COOLDOWN_SECONDS = 1.0
#: How long pushed jobs are collected before their rows are marked queued, in one transaction.
MARK_LINGER_SECONDS = 0.1
#: Timeouts of the front end's Redis connection: a request must never wait seconds for a dead server.
FRONT_END_CONNECT_TIMEOUT = 0.25
FRONT_END_SOCKET_TIMEOUT = 0.5


class CircuitBreaker:
    """Open for ``cooldown`` seconds after a failure; the first call after that tries again."""

    def __init__(
        self, cooldown: float = BREAKER_COOLDOWN_SECONDS, clock: Callable[[], float] = time.monotonic
    ):
        self._cooldown = cooldown
        self._clock = clock
        self._open_until = 0.0
        self._failing = False

    def allow(self) -> bool:
        return self._clock() >= self._open_until

    def failed(self) -> bool:
        """Record a failure; True if this starts an outage (worth a warning) rather than continues one."""
        first = not self._failing
        self._failing = True
        self._open_until = self._clock() + self._cooldown
        return first

    def succeeded(self) -> bool:
        """Record a success; True if this ends an outage."""
        was = self._failing
        self._failing = False
        return was


class QueuedMarks:
    """Writes "this row's job was pushed" onto outbox rows from a background thread, in batches.

    Requests only append to a list. The thread lingers ``linger`` seconds after the first mark of a batch
    before writing it, so that under load one transaction marks many rows, and its work rarely competes
    with a request (for the GIL, and on SQLite for the write lock).
    """

    def __init__(
        self, db: Database, recheck_after: timedelta, *, linger: float = MARK_LINGER_SECONDS
    ) -> None:
        self._db = db
        self._recheck_after = recheck_after
        self._linger = linger
        self._cond = threading.Condition()
        self._items: list[tuple[int, str, datetime]] = []
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, changeset_id: int, job_id: str, queued_at: datetime) -> None:
        with self._cond:
            self._items.append((changeset_id, job_id, queued_at))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="herald-queued-marks", daemon=True)
                self._thread.start()
            if len(self._items) == 1:  # the thread sleeps until a batch starts, then lingers on its own
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._items or self._closed)
                if not self._closed:
                    self._cond.wait_for(lambda: self._closed, timeout=self._linger)
                batch, self._items = self._items, []
                if not batch and self._closed:
                    return
            try:
                with self._db.write() as conn:
                    records.mark_queued(conn, batch, recheck_after=self._recheck_after)
            except Exception as exc:  # the rows stay pending; the relay pushes them again, harmlessly
                log.warning("could not mark %d pushed notification(s) as queued: %s", len(batch), exc)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is left, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)


def _front_end_queue(settings: Settings) -> tuple[Queue, Callable[[], None]]:
    """The queue the front end pushes to, and how to release it.

    For Redis, a client of its own with short timeouts and a single quick retry (a Redis restart drops
    pooled connections; one retry on a fresh one hides that), instead of the workers' patient client.
    """
    if settings.queue_backend != "redis":
        queue = make_queue(settings)
        return queue, queue.close
    from redis.backoff import NoBackoff

    from herald.queue.redis_backend import RedisQueue
    from herald.queue.redis_client import connect

    client = connect(
        settings,
        connect_timeout=FRONT_END_CONNECT_TIMEOUT,
        socket_timeout=FRONT_END_SOCKET_TIMEOUT,
        backoff=NoBackoff(),
        client_name="herald-web",
    )
    queue = RedisQueue(settings, client=client)

    def close() -> None:
        queue.close()
        client.close()

    return queue, close


class FrontEndDispatcher:
    """The web's :class:`~herald.web.runtime.Dispatcher`: inline delivery or a queue push per project."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        queue: Queue | None = None,
        relay: Relay | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self._policy = DispatchPolicy(settings)
        self._close_queue: Callable[[], None] = lambda: None
        if queue is None and settings.async_emails.enabled:
            queue, self._close_queue = _front_end_queue(settings)
        self._queue = queue
        self._breaker = breaker or CircuitBreaker()
        self._marks = QueuedMarks(db, timedelta(seconds=requeue_after(settings)))
        self._holder_prefix = f"web:{os.getpid()}:"
        self._relay: Relay | None = relay
        self._owns_relay = relay is None
        self._deliverer: Deliverer | None = None
        self._senders: ThreadPoolExecutor | None = None
        #: Inline sends count into the same totals as the workers' (written once a second).
        self._stats: stats.StatsWriter | None = None
        self._lazy = threading.Lock()

    def _inline_deliverer(self) -> Deliverer:
        """Built on the first inline delivery: a front end whose projects are all async needs no relay."""
        with self._lazy:
            if self._deliverer is None:
                share = max(1, self.settings.smtp_max_connections // 4)
                if self._relay is None:
                    self._relay = make_pool(self.settings, max_connections=share)
                self._senders = ThreadPoolExecutor(share, thread_name_prefix="herald-inline-send")
                # No lease keeper renews an inline lock and no relay gate holds it: the lease must outlast
                # a run whose sends time out, and a relay outage leaves recipients for the recovery worker.
                lease = self.settings.lease_seconds + 2 * self.settings.smtp_timeout
                self._deliverer = Deliverer(
                    self.db, self.settings, self._relay, senders=self._senders, lease_seconds=lease
                )
                self._stats = stats.StatsWriter(self.db)
                self._stats.start()
            return self._deliverer

    def mode_for(self, project_id: int) -> DispatchMode:
        return self._policy.mode_for(project_id)

    def after_commit(self, changeset_id: int, mode: DispatchMode) -> None:
        """Hand the committed changeset on. Never raises: the change is committed whatever happens here."""
        try:
            if mode is DispatchMode.ASYNC:
                self._push(changeset_id)
            else:
                self._inline(changeset_id)
        except Exception:
            log.exception("notification of changeset_id=%d left to the relay after an error", changeset_id)

    def _push(self, changeset_id: int) -> None:
        queue = self._queue
        if queue is None:  # async for this project but no queue: only if the policy changed under us
            log.warning("changeset_id=%d: no queue configured; left pending", changeset_id)
            return
        if not self._breaker.allow():
            return  # the queue failed less than a second ago; the relay pushes this row later
        job = Job.new(changeset_id)
        try:
            queue.enqueue(job)
        except QueueError as exc:
            if self._breaker.failed():
                log.warning(
                    "queue unavailable (%s): new notifications stay pending and the relay pushes them "
                    "when it is back",
                    exc,
                )
            return
        if self._breaker.succeeded():
            log.info("queue reachable again")
        log.info("Notification: changeset_id=%d queued job_id=%s", changeset_id, job.id)
        self._marks.add(changeset_id, job.id, datetime.fromtimestamp(job.enqueued_at, UTC))

    def _inline(self, changeset_id: int) -> None:
        limit = self.settings.inline_max_recipients
        outcome = self._inline_deliverer().deliver(
            changeset_id,
            holder=f"{self._holder_prefix}{uuid.uuid4().hex[:12]}",
            mode=DispatchMode.INLINE,
            max_recipients=limit,
        )
        if self._stats is not None:
            count_sends(self._stats.counts, outcome)
        if outcome.verdict is Verdict.TOO_MANY:
            # Thousands of mails must not hold a request for seconds (nor grow the web process).
            log.info(
                "Notification: changeset_id=%d has %d recipients, more than inline_max_recipients = %d: "
                "handed to the backend workers",
                changeset_id,
                outcome.recipients,
                limit,
            )
            if self._queue is not None:
                self._push(changeset_id)
            # Without a queue of its own the row stays pending and the relay pushes it within seconds.

    def close(self) -> None:
        self._marks.close()
        if self._stats is not None:
            self._stats.stop()
        if self._senders is not None:
            self._senders.shutdown(wait=False, cancel_futures=True)
        if self._relay is not None and self._owns_relay:
            self._relay.close()
        self._close_queue()


def build_dispatcher(settings: Settings, db: Database) -> FrontEndDispatcher:
    """The dispatcher of the web front end (see the module docstring)."""
    return FrontEndDispatcher(settings, db)
