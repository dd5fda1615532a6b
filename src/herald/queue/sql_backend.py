"""The embedded queue: one table in SQLite (the zero-setup default) or PostgreSQL.

Claiming is one transaction: pick a row and mark it claimed. On PostgreSQL concurrent claimers skip each
other's rows (``FOR UPDATE SKIP LOCKED``); on SQLite ``BEGIN IMMEDIATE`` makes them take turns. A claim
is fenced by ``(row id, attempts)``: the attempt count grows with every claim, so a worker whose lease
expired and whose job was claimed again can no longer ack, retry, dead-letter or extend it.

How blocked claimers wake up is in :mod:`herald.queue.sql_wake`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, case, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from herald.config import Settings
from herald.queue.base import (
    DeadLetter,
    Job,
    Queue,
    QueueStats,
    check_claimed,
    check_worker,
    decode_job,
    raw_text,
)
from herald.queue.errors import LeaseLost, MalformedJob
from herald.queue.sql_engine import READ_ONLY_OPTION, make_engine, translate_errors
from herald.queue.sql_schema import CLAIMED, DEAD, READY, create_schema, queue_table
from herald.queue.sql_wake import NOTIFY, PgWaker, PollWaker

__all__ = ["SqlQueue"]

log = logging.getLogger("herald.queue")

t = queue_table
_REASON_MAX = 2000
#: When the only ready row is being taken by another claimer right now, look again this soon.
_RACE_WAIT_SECONDS = 0.01
_AGAIN = object()  # a claim attempt dead-lettered a row: look again at once


class SqlQueue(Queue):
    """The :class:`~herald.queue.base.Queue` on one SQL table. Safe to share between threads.

    The table is created on first use if it is missing (see :func:`~herald.queue.sql_schema.create_schema`).
    """

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self._owns_engine = engine is None
        if engine is None:
            engine = make_engine(settings.database_url or f"sqlite:///{settings.sqlite_path}")
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"
        self._waker = PgWaker(engine) if self._pg else PollWaker()
        self._lease = settings.lease_seconds
        self._max_attempts = settings.job_max_attempts
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._closed = False

    @property
    def engine(self) -> Engine:
        """The engine this queue uses."""
        return self._engine

    def create_schema(self) -> None:
        """Create the queue table if it is missing."""
        create_schema(self._engine)
        self._schema_ready = True

    @contextmanager
    def _tx(self, *, read_only: bool = False) -> Iterator[Connection]:
        if not self._schema_ready:
            with self._schema_lock:
                if not self._schema_ready:
                    self.create_schema()
        with translate_errors(), self._engine.connect() as conn:
            if read_only:
                conn.execution_options(**{READ_ONLY_OPTION: True})
            with conn.begin():
                yield conn

    def _pushed(self, conn: Connection) -> None:
        """Wake claimers once this transaction commits (other processes via NOTIFY on PostgreSQL)."""
        if self._pg:
            conn.execute(NOTIFY)

    # --- producing -----------------------------------------------------------------------------------

    def enqueue(self, job: Job) -> None:
        insert = pg_insert(t) if self._pg else sqlite_insert(t)
        stmt = insert.values(
            job_id=job.id,
            changeset_id=job.changeset_id,
            payload=job.to_json(),
            state=READY,
            available_at=time.time(),
            attempts=0,
            enqueued_at=job.enqueued_at,
        ).on_conflict_do_nothing(index_elements=[t.c.job_id])
        with self._tx() as conn:
            if conn.execute(stmt).rowcount:
                self._pushed(conn)
        self._waker.bump()

    # --- claiming ------------------------------------------------------------------------------------

    def claim(self, worker: str, timeout: float) -> Job | None:
        check_worker(worker)
        deadline = time.monotonic() + max(0.0, timeout)
        if timeout > 0:
            with translate_errors():
                self._waker.start()
        while not self._closed:
            seen = self._waker.snapshot()  # before looking: a push during the look still wakes the wait
            found = self._claim_once(worker)
            if isinstance(found, Job):
                return found
            if found is _AGAIN:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = remaining
            if found is not None:  # seconds until a retry is due or a lease expires
                wait = min(wait, max(found, _RACE_WAIT_SECONDS))
            self._waker.wait(seen, wait)
        return None

    def _claim_once(self, worker: str) -> Job | float | object | None:
        """Claim one row. Returns the job, _AGAIN, or when nothing is claimable the seconds until
        something may be (None: nothing at all is queued)."""
        now = time.time()
        if not self._pg:
            # SQLite: look without the write lock first. Idle claimers poll, and must not hold up the
            # writers of the same database file 20 times a second each.
            with self._tx(read_only=True) as conn:
                claimable = or_(
                    and_(t.c.state == CLAIMED, t.c.lease_until <= now),
                    and_(t.c.state == READY, t.c.available_at <= now),
                )
                if conn.execute(select(t.c.id).where(claimable).limit(1)).first() is None:
                    return self._next_due(conn, now)
        with self._tx() as conn:
            # An expired lease first: its job was already under way, so it does not queue up again.
            row = conn.execute(
                select(t)
                .where(t.c.state == CLAIMED, t.c.lease_until <= now)
                .order_by(t.c.lease_until)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is not None:
                log.warning(
                    "reclaiming job %s whose lease expired (worker %s died or stalled)",
                    row.job_id,
                    row.worker,
                )
            else:
                row = conn.execute(
                    select(t)
                    .where(t.c.state == READY, t.c.available_at <= now)
                    .order_by(t.c.available_at, t.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
            if row is None:
                return self._next_due(conn, now)
            return self._take(conn, row, worker, now)

    @staticmethod
    def _next_due(conn: Connection, now: float) -> float | None:
        """Seconds until a delayed job is due or a lease expires; None if no job is ready or claimed."""
        next_at = conn.execute(
            select(func.min(case((t.c.state == READY, t.c.available_at), else_=t.c.lease_until))).where(
                t.c.state.in_((READY, CLAIMED))
            )
        ).scalar()
        return None if next_at is None else next_at - now

    def _take(self, conn: Connection, row: Row[Any], worker: str, now: float) -> Job | object:
        try:
            job = decode_job(row.payload)
            if job.id != row.job_id:
                raise MalformedJob(f"payload id {job.id} differs from the row's job_id {row.job_id!r}")
            if job.changeset_id != row.changeset_id:
                raise MalformedJob(
                    f"payload changeset_id {job.changeset_id} differs from the row's {row.changeset_id}"
                )
        except MalformedJob as exc:
            log.error("dead-lettered malformed job row %s (%s): %s", row.id, row.job_id, exc.reason)
            self._bury(conn, row.id, f"malformed job: {exc.reason}", now)
            return _AGAIN
        attempts = row.attempts + 1
        if attempts > self._max_attempts:
            reason = f"too many attempts: claimed {row.attempts} times, limit {self._max_attempts}"
            if row.last_error:
                reason += f"; last error: {row.last_error}"
            log.warning("dead-lettered job %s (changeset %d): %s", job.id, job.changeset_id, reason)
            self._bury(conn, row.id, reason, now)
            return _AGAIN
        conn.execute(
            update(t)
            .where(t.c.id == row.id)
            .values(state=CLAIMED, attempts=attempts, lease_until=now + self._lease, worker=worker)
        )
        return job.claimed(attempts, str(row.id))

    def _bury(self, conn: Connection, row_id: int, reason: str, now: float) -> None:
        conn.execute(
            update(t)
            .where(t.c.id == row_id)
            .values(state=DEAD, died_at=now, last_error=reason[:_REASON_MAX], lease_until=None, worker=None)
        )

    # --- finishing -----------------------------------------------------------------------------------

    @staticmethod
    def _fence(job: Job) -> Any:
        """This worker's claim on the job: the row, still claimed, not claimed again since."""
        receipt = check_claimed(job)
        try:
            row_id = int(receipt)
        except ValueError:
            raise ValueError(
                f"job {job.id} has receipt {receipt!r}, which is not from the SQL queue"
            ) from None
        return and_(t.c.id == row_id, t.c.state == CLAIMED, t.c.attempts == job.attempts)

    def ack(self, job: Job) -> None:
        with self._tx() as conn:
            done = conn.execute(delete(t).where(self._fence(job))).rowcount
        if not done:
            log.warning("ack of job %s ignored: its lease was lost to another worker", job.id)

    def retry(self, job: Job, delay: float, reason: str) -> None:
        delay = delay if math.isfinite(delay) and delay > 0 else 0.0
        with self._tx() as conn:
            done = conn.execute(
                update(t)
                .where(self._fence(job))
                .values(
                    state=READY,
                    available_at=time.time() + delay,
                    lease_until=None,
                    worker=None,
                    last_error=reason[:_REASON_MAX],
                )
            ).rowcount
            if done:
                self._pushed(conn)
        if done:
            self._waker.bump()
        else:
            log.warning("retry of job %s ignored: its lease was lost to another worker", job.id)

    def dead(self, job: Job, reason: str) -> None:
        with self._tx() as conn:
            done = conn.execute(
                update(t)
                .where(self._fence(job))
                .values(
                    state=DEAD,
                    died_at=time.time(),
                    last_error=reason[:_REASON_MAX],
                    lease_until=None,
                    worker=None,
                )
            ).rowcount
        if not done:
            log.warning("dead-lettering of job %s ignored: its lease was lost to another worker", job.id)

    def extend(self, job: Job) -> None:
        with self._tx() as conn:
            done = conn.execute(
                update(t).where(self._fence(job)).values(lease_until=time.time() + self._lease)
            ).rowcount
        if not done:
            raise LeaseLost(f"job {job.id} is no longer leased to this worker")

    def reclaim_stale(self) -> int:
        with self._tx() as conn:
            count = conn.execute(
                update(t)
                .where(t.c.state == CLAIMED, t.c.lease_until <= time.time())
                .values(state=READY, lease_until=None, worker=None)
            ).rowcount
            if count:
                self._pushed(conn)
        if count:
            log.warning("reclaimed %d job(s) whose lease expired (a worker died or stalled)", count)
            self._waker.bump()
        return count

    # --- inspecting ----------------------------------------------------------------------------------

    def stats(self) -> QueueStats:
        now = time.time()

        def count(*conditions: Any) -> Any:
            return func.coalesce(func.sum(case((and_(*conditions), 1), else_=0)), 0)

        with self._tx(read_only=True) as conn:
            row = conn.execute(
                select(
                    count(t.c.state == READY, t.c.available_at <= now),
                    count(t.c.state == CLAIMED),
                    count(t.c.state == READY, t.c.available_at > now),
                    count(t.c.state == DEAD),
                    func.min(case((t.c.state != DEAD, t.c.enqueued_at))),
                )
            ).one()
        depth, in_flight, delayed, dead, oldest = row
        return QueueStats(
            depth=int(depth),
            in_flight=int(in_flight),
            delayed=int(delayed),
            dead=int(dead),
            oldest_age_seconds=max(0.0, now - oldest) if oldest is not None else 0.0,
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with self._tx(read_only=True) as conn:
            rows = conn.execute(
                select(t).where(t.c.state == DEAD).order_by(t.c.died_at, t.c.id).limit(limit)
            ).all()
        return [
            DeadLetter(
                job_id=row.job_id,
                changeset_id=row.changeset_id,
                reason=row.last_error or "",
                attempts=row.attempts,
                died_at=row.died_at,
                raw=raw_text(row.payload),
            )
            for row in rows
        ]

    def requeue_dead(self, job_id: str | None = None) -> int:
        query = select(t.c.id, t.c.job_id, t.c.payload).where(t.c.state == DEAD).with_for_update()
        if job_id is not None:
            query = query.where(t.c.job_id == job_id)
        requeued = 0
        with self._tx() as conn:
            for row in conn.execute(query).all():
                try:
                    job = decode_job(row.payload)
                except MalformedJob:
                    continue  # requeuing garbage would only kill it again
                if job.id != row.job_id:
                    continue
                now = time.time()
                fresh = Job(id=job.id, changeset_id=job.changeset_id, enqueued_at=now)
                conn.execute(
                    update(t)
                    .where(t.c.id == row.id)
                    .values(
                        state=READY,
                        payload=fresh.to_json(),
                        available_at=now,
                        enqueued_at=now,
                        attempts=0,
                        last_error=None,
                        died_at=None,
                    )
                )
                requeued += 1
            if requeued:
                self._pushed(conn)
        if requeued:
            self._waker.bump()
        return requeued

    def purge_dead(self) -> int:
        with self._tx() as conn:
            return conn.execute(delete(t).where(t.c.state == DEAD)).rowcount

    def ping(self) -> None:
        with translate_errors(), self._engine.connect() as conn:
            conn.execute(select(1))

    def close(self) -> None:
        self._closed = True
        self._waker.close()
        if self._owns_engine:
            self._engine.dispose()
