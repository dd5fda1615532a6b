"""The embedded queue: one table in SQLite (the zero-setup default) or PostgreSQL.

Claiming is one transaction: pick a row and mark it claimed. On PostgreSQL concurrent claimers skip each
other's rows (``FOR UPDATE SKIP LOCKED``); on SQLite ``BEGIN IMMEDIATE`` makes them take turns. A claim
is fenced by ``(row id, fence)``: the fence grows with every claim and is never reset (unlike the attempt
count, which a retry resets), so a worker whose lease expired or was released, and whose job was claimed
again, can no longer ack, retry, dead-letter or extend it.

Whatever another program wrote into the table (SQLite keeps text in a REAL column), a claim dead-letters
the row with the reason rather than fail on it: see :func:`_corrupt` and :func:`_row_problem`.

How blocked claimers wake up is in :mod:`herald.queue.sql_wake`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, case, delete, func, not_, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from herald.config import Settings
from herald.queue.base import (
    CLOCK_SKEW_SECONDS,
    EARLIEST_PLAUSIBLE_TIME,
    LATEST_TIME,
    MAX_DELAY_SECONDS,
    MAX_STORED_ATTEMPTS,
    DeadLetter,
    Job,
    Queue,
    QueueStats,
    check_batch,
    check_claimed,
    check_worker,
    decode_job,
    oldest_age,
    raw_text,
    retry_delay,
)
from herald.queue.errors import MalformedJob
from herald.queue.sql_engine import READ_ONLY_OPTION, make_engine, translate_errors
from herald.queue.sql_schema import CLAIMED, DEAD, READY, create_schema, queue_table
from herald.queue.sql_wake import NOTIFY, PgWaker, PollWaker

__all__ = ["SqlQueue"]

log = logging.getLogger("herald.queue")

t = queue_table
_REASON_MAX = 2000
#: When the only ready row is being taken by another claimer right now, look again this soon.
_RACE_WAIT_SECONDS = 0.01
#: How often a claimer also looks for rows with garbage in them, to dead-letter them.
_SWEEP_SECONDS = 1.0
_MAX_FENCE = 2**62


def _number(value: object) -> float | None:
    """A finite number as stored in a time column, or None (SQLite keeps text or blobs in any column)."""
    if type(value) not in (int, float) or not math.isfinite(value):  # type: ignore[arg-type]
        return None
    return float(value)  # type: ignore[arg-type]


def _count(value: object, most: int) -> bool:
    return type(value) is int and 0 <= value <= most


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _corrupt(now: float, lease: float) -> Any:
    """Rows holding what herald never writes; :func:`_row_problem` says the same in Python (and says why).

    On SQLite text and blobs compare greater than every number, so ``BETWEEN`` is false for them; NaN is
    never between anything on PostgreSQL.
    """
    return or_(
        not_(t.c.attempts.between(0, MAX_STORED_ATTEMPTS)),
        not_(t.c.fence.between(0, _MAX_FENCE)),
        not_(t.c.enqueued_at.between(0, LATEST_TIME)),
        not_(t.c.available_at.between(-LATEST_TIME, now + MAX_DELAY_SECONDS + CLOCK_SKEW_SECONDS)),
        and_(
            t.c.state == CLAIMED,
            or_(
                t.c.lease_until.is_(None),
                not_(t.c.lease_until.between(-LATEST_TIME, now + lease + CLOCK_SKEW_SECONDS)),
            ),
        ),
    )


def _row_problem(row: Row[Any], now: float, lease: float) -> str | None:
    """Why this row's queue fields cannot be herald's, or None."""
    if not _count(row.attempts, MAX_STORED_ATTEMPTS):
        return f"attempts = {_short(row.attempts)}, not a claim count from 0 to {MAX_STORED_ATTEMPTS}"
    if not _count(row.fence, _MAX_FENCE):
        return f"fence = {_short(row.fence)}, not a claim counter"
    enqueued = _number(row.enqueued_at)
    if enqueued is None or not 0 <= enqueued <= LATEST_TIME:
        return f"enqueued_at = {_short(row.enqueued_at)}, not a unix time"
    available = _number(row.available_at)
    if available is None or not -LATEST_TIME <= available <= now + MAX_DELAY_SECONDS + CLOCK_SKEW_SECONDS:
        return f"available_at = {_short(row.available_at)}, not a unix time within a year"
    if row.state == CLAIMED:
        lease_until = _number(row.lease_until)
        if lease_until is None or not -LATEST_TIME <= lease_until <= now + lease + CLOCK_SKEW_SECONDS:
            return f"lease_until = {_short(row.lease_until)}, not the end of a lease"
    return None


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
        self._next_sweep = 0.0  # the first claim sweeps
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

    def claim_batch(self, consumer: str, max_jobs: int, timeout: float) -> list[Job]:
        check_worker(consumer)
        check_batch(max_jobs)
        deadline = time.monotonic() + max(0.0, timeout)
        if timeout > 0:
            with translate_errors():
                self._waker.start()
        while not self._closed:
            seen = self._waker.snapshot()  # before looking: a push during the look still wakes the wait
            found = self._claim_once(consumer, max_jobs)
            if isinstance(found, list):
                if found:
                    return found
                continue  # rows were dead-lettered: look again at once
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            wait = remaining
            if found is not None:  # seconds until a retry is due or a lease expires
                wait = min(wait, max(found, _RACE_WAIT_SECONDS))
            self._waker.wait(seen, wait)
        return []

    def _claimable(self, now: float, sweep: bool) -> Any:
        due = or_(
            and_(t.c.state == CLAIMED, t.c.lease_until <= now),
            and_(t.c.state == READY, t.c.available_at <= now),
        )
        return or_(due, and_(t.c.state != DEAD, _corrupt(now, self._lease))) if sweep else due

    def _claim_once(self, consumer: str, max_jobs: int) -> list[Job] | float | None:
        """Claim up to ``max_jobs`` rows. Returns the jobs (an empty list: rows were dead-lettered, look
        again), or when nothing is claimable the seconds until something may be (None: nothing queued)."""
        now = time.time()
        # Rows that are not herald's (garbage values) are looked for every _SWEEP_SECONDS, not on every
        # claim: that condition cannot use an index, and such rows block nobody in the meantime.
        sweep = now >= self._next_sweep
        claimable = self._claimable(now, sweep)
        if not self._pg:
            # SQLite: look without the write lock first. Idle claimers poll, and must not hold up the
            # writers of the same database file 20 times a second each.
            with self._tx(read_only=True) as conn:
                if conn.execute(select(t.c.id).where(claimable).limit(1)).first() is None:
                    if sweep:
                        self._next_sweep = now + _SWEEP_SECONDS
                    return self._next_due(conn, now)
        with self._tx() as conn:
            # An expired lease first: its job was already under way, so it does not queue up again. Two
            # statements rather than one with OR: each walks its own index and stops at the limit.
            rows = conn.execute(
                select(t)
                .where(t.c.state == CLAIMED, t.c.lease_until <= now)
                .order_by(t.c.lease_until)
                .limit(max_jobs)
                .with_for_update(skip_locked=True)
            ).all()
            if len(rows) < max_jobs:
                rows += conn.execute(
                    select(t)
                    .where(t.c.state == READY, t.c.available_at <= now)
                    .order_by(t.c.available_at, t.c.id)
                    .limit(max_jobs - len(rows))
                    .with_for_update(skip_locked=True)
                ).all()
            if sweep and len(rows) < max_jobs:
                room = max_jobs - len(rows)
                query = select(t).where(t.c.state != DEAD, _corrupt(now, self._lease))
                if rows:
                    query = query.where(t.c.id.not_in([row.id for row in rows]))
                swept = conn.execute(query.limit(room).with_for_update(skip_locked=True)).all()
                rows += swept
                if len(swept) < room:  # else garbage may be left: sweep again on the next claim
                    self._next_sweep = now + _SWEEP_SECONDS
            if not rows:
                return self._next_due(conn, now)
            jobs: list[Job] = []
            ids: list[int] = []
            for row in rows:
                job = self._judge(conn, row, now)
                if job is not None:
                    jobs.append(job)
                    ids.append(row.id)
            if ids:
                conn.execute(
                    update(t)
                    .where(t.c.id.in_(ids))
                    .values(
                        state=CLAIMED,
                        attempts=t.c.attempts + 1,
                        fence=t.c.fence + 1,
                        lease_until=now + self._lease,
                        worker=consumer,
                    )
                )
            return jobs

    @staticmethod
    def _next_due(conn: Connection, now: float) -> float | None:
        """Seconds until a delayed job is due or a lease expires; None if no job is ready or claimed."""
        next_at = conn.execute(
            select(func.min(case((t.c.state == READY, t.c.available_at), else_=t.c.lease_until))).where(
                t.c.state.in_((READY, CLAIMED))
            )
        ).scalar()
        if next_at is None:
            return None
        if _number(next_at) is None:  # garbage in a time column: the next sweep buries it
            return _SWEEP_SECONDS
        return float(next_at) - now

    def _judge(self, conn: Connection, row: Row[Any], now: float) -> Job | None:
        """The job in ``row`` as claimed now (the caller marks the row), or None after dead-lettering it."""
        try:
            job = decode_job(row.payload)
            if job.id != row.job_id:
                raise MalformedJob(f"payload id {job.id} differs from the row's job_id {_short(row.job_id)}")
            if job.changeset_id != row.changeset_id:
                raise MalformedJob(
                    f"payload changeset_id {job.changeset_id} differs from the row's "
                    f"{_short(row.changeset_id)}"
                )
        except MalformedJob as exc:
            log.error("dead-lettered malformed job row %s (%s): %s", row.id, _short(row.job_id), exc.reason)
            self._bury(conn, row, f"malformed job: {exc.reason}", now)
            return None
        problem = _row_problem(row, now, self._lease)
        if problem is not None:
            reason = f"corrupt queue row: {problem}"
            log.error("dead-lettered job %s (changeset %d): %s", job.id, job.changeset_id, reason)
            self._bury(conn, row, reason, now)
            return None
        attempts = row.attempts + 1
        if attempts > self._max_attempts:
            reason = f"too many attempts: claimed {row.attempts} times, limit {self._max_attempts}"
            if row.last_error:
                reason += f"; last error: {row.last_error}"
            log.warning("dead-lettered job %s (changeset %d): %s", job.id, job.changeset_id, reason)
            self._bury(conn, row, reason, now)
            return None
        if row.state == CLAIMED:
            log.warning(
                "reclaiming job %s whose lease expired (worker %s died or stalled)", job.id, row.worker
            )
        return job.claimed(attempts, f"{row.id}:{row.fence + 1}")

    def _bury(self, conn: Connection, row: Row[Any], reason: str, now: float) -> None:
        # Counters that are garbage are replaced, so the dead letter can be listed and requeued; the reason
        # quotes what was there.
        attempts = row.attempts if _count(row.attempts, MAX_STORED_ATTEMPTS) else 0
        fence = row.fence if _count(row.fence, _MAX_FENCE) else 0
        conn.execute(
            update(t)
            .where(t.c.id == row.id)
            .values(
                state=DEAD,
                died_at=now,
                last_error=reason[:_REASON_MAX],
                lease_until=None,
                worker=None,
                attempts=attempts,
                fence=fence,
            )
        )

    # --- finishing -----------------------------------------------------------------------------------

    @staticmethod
    def _receipt(job: Job) -> tuple[int, int]:
        """The (row id, fence) this worker's claim on the job was given."""
        receipt = check_claimed(job)
        row_id, sep, fence = receipt.partition(":")
        try:
            if not sep:
                raise ValueError(receipt)
            return int(row_id), int(fence)
        except ValueError:
            raise ValueError(
                f"job {job.id} has receipt {receipt!r}, which is not from the SQL queue"
            ) from None

    def _fence(self, job: Job) -> Any:
        """This worker's claim on the job: the row, still claimed, not claimed again since."""
        row_id, fence = self._receipt(job)
        return and_(t.c.id == row_id, t.c.state == CLAIMED, t.c.fence == fence)

    def ack(self, job: Job) -> None:
        with self._tx() as conn:
            done = conn.execute(delete(t).where(self._fence(job))).rowcount
        if not done:
            log.warning(
                "ack of job_id=%s changeset_id=%d ignored: its lease was lost to another worker",
                job.id,
                job.changeset_id,
            )

    def retry(self, job: Job, delay: float, reason: str) -> None:
        delay = retry_delay(delay)
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
                    attempts=0,  # settled: the next claim is the first of a new round
                )
            ).rowcount
            if done:
                self._pushed(conn)
        if done:
            self._waker.bump()
        else:
            log.warning(
                "retry of job_id=%s changeset_id=%d ignored: its lease was lost to another worker",
                job.id,
                job.changeset_id,
            )

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
            log.warning(
                "dead-lettering of job_id=%s changeset_id=%d ignored: its lease was lost to another worker",
                job.id,
                job.changeset_id,
            )

    def extend_batch(self, jobs: Sequence[Job]) -> list[Job]:
        receipts = [self._receipt(job) for job in jobs]
        if not receipts:
            return []
        with self._tx() as conn:
            renewed = {
                (row.id, row.fence)
                for row in conn.execute(
                    update(t)
                    .where(tuple_(t.c.id, t.c.fence).in_(receipts), t.c.state == CLAIMED)
                    .values(lease_until=time.time() + self._lease)
                    .returning(t.c.id, t.c.fence)
                )
            }
        return [job for job, receipt in zip(jobs, receipts, strict=True) if receipt not in renewed]

    def release(self, consumer: str) -> int:
        check_worker(consumer)
        with self._tx() as conn:
            # attempts is kept: a release is not a verdict, and a job that kills its worker must still
            # die as poison. The fence is kept too; the next claim raises it, voiding the old receipt.
            count = conn.execute(
                update(t)
                .where(t.c.state == CLAIMED, t.c.worker == consumer)
                .values(state=READY, lease_until=None, worker=None)
            ).rowcount
            if count:
                self._pushed(conn)
        if count:
            log.warning("released %d job(s) held by consumer %s (its process died)", count, consumer)
            self._waker.bump()
        return count

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
                    # Only times that can be real: a 0 written by something else is not a 57-year-old job.
                    func.min(
                        case(
                            (
                                and_(
                                    t.c.state != DEAD,
                                    t.c.enqueued_at.between(
                                        EARLIEST_PLAUSIBLE_TIME, now + CLOCK_SKEW_SECONDS
                                    ),
                                ),
                                t.c.enqueued_at,
                            )
                        )
                    ),
                )
            ).one()
        depth, in_flight, delayed, dead, oldest = row
        return QueueStats(
            depth=int(depth),
            in_flight=int(in_flight),
            delayed=int(delayed),
            dead=int(dead),
            oldest_age_seconds=oldest_age(oldest, now),
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with self._tx(read_only=True) as conn:
            rows = conn.execute(
                select(t).where(t.c.state == DEAD).order_by(t.c.died_at, t.c.id).limit(limit)
            ).all()
        return [
            # Whatever the row holds, a letter of the declared types (the admin page lists garbage too).
            DeadLetter(
                job_id=str(row.job_id),
                changeset_id=row.changeset_id if type(row.changeset_id) is int else None,
                reason=str(row.last_error or ""),
                attempts=row.attempts if _count(row.attempts, MAX_STORED_ATTEMPTS) else 0,
                died_at=_number(row.died_at) or 0.0,
                raw=raw_text(row.payload) if isinstance(row.payload, str | bytes) else repr(row.payload),
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

    def purge_dead(self, job_id: str | None = None) -> int:
        query = delete(t).where(t.c.state == DEAD)
        if job_id is not None:
            query = query.where(t.c.job_id == job_id)
        with self._tx() as conn:
            return conn.execute(query).rowcount

    def ping(self) -> None:
        with translate_errors(), self._engine.connect() as conn:
            conn.execute(select(1))

    def close(self) -> None:
        self._closed = True
        self._waker.close()
        if self._owns_engine:
            self._engine.dispose()
