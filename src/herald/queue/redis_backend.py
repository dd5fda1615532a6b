"""The production queue: a Redis stream read through one consumer group.

Where each job lives (keys in :mod:`herald.queue.keys`)::

    enqueue ──XADD──> stream ──XREADGROUP──> pending (in flight, leased) ──ack──> gone
                        ▲  ▲                    │  │
                        │  └── reclaim: idle > lease, re-added under a new id
                        │                       │  └──dead──> dead letters
                     promote <── delayed <──retry

A lease is the idle time of the pending entry: ``extend``/``extend_batch`` reset it, and an entry idle
longer than ``lease_seconds`` is re-added to the stream (which voids the old owner's receipt). ``release``
does the same at once for every entry one consumer holds, then deletes that consumer. Claim counts live in
a hash rather than in XPENDING's delivery count, because reclaims and releases re-add the entry and restart
that count; a retry clears the job's count (it was settled).

Redis may lose everything (a restart without persistence): the consumer group is then recreated on the
spot, from the start of the stream, and the tracker's outbox re-pushes what was queued.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import redis

from herald.config import Settings
from herald.queue.base import (
    CLOCK_SKEW_SECONDS,
    EARLIEST_PLAUSIBLE_TIME,
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
from herald.queue.errors import MalformedJob, QueueUnavailable
from herald.queue.keys import GROUP, JOB_FIELD, RECLAIMER, RedisKeys
from herald.queue.redis_client import connect, translate_errors
from herald.queue.redis_scripts import Scripts

__all__ = ["RedisQueue"]

log = logging.getLogger("herald.queue")

T = TypeVar("T")

#: Longest single blocking read: due retries and expired leases are looked at this often while idle.
MAX_BLOCK_SECONDS = 1.0
#: Entries moved per script call, so one call never holds the server for long.
BATCH = 100
_REASON_MAX = 2000
_MAX_DELAY_MS = int(MAX_DELAY_SECONDS * 1000)


class RedisQueue(Queue):
    """The :class:`~herald.queue.base.Queue` on Redis streams. Safe to share between threads."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self._keys = RedisKeys(settings.redis_namespace)
        self._owns_client = client is None
        self._client = connect(settings) if client is None else client
        self._scripts = Scripts.register(self._client)
        self._lease_ms = max(1, int(settings.lease_seconds * 1000))
        self._max_attempts = settings.job_max_attempts
        # A blocked claimer also watches for expired leases, so it must wake several times per lease.
        self._block_cap = min(MAX_BLOCK_SECONDS, settings.lease_seconds / 4)
        self._closed = False

    @property
    def keys(self) -> RedisKeys:
        """The keys of this queue."""
        return self._keys

    # --- plumbing ------------------------------------------------------------------------------------

    def _run(self, op: Callable[[], T]) -> T:
        """Run ``op`` with errors translated, recreating the consumer group if Redis lost it."""
        with translate_errors():
            try:
                return op()
            except redis.exceptions.ResponseError as exc:
                # NOGROUP: the group is gone (Redis lost its data). UNBLOCKED: the stream was deleted
                # under a blocked XREADGROUP. Either way: recreate the group and carry on.
                if "NOGROUP" not in str(exc) and not str(exc).startswith("UNBLOCKED"):
                    raise
            self._create_group()
            return op()

    def _create_group(self) -> None:
        # From "0", not "$": jobs pushed after Redis lost the group but before this call must not be
        # skipped. Entries already handled are deleted on ack, so "0" re-delivers nothing that is done.
        try:
            self._client.xgroup_create(self._keys.stream, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # another worker created it first: fine
                raise
            return
        log.info(
            "created consumer group %s on %s (first start, or Redis lost its data)", GROUP, self._keys.stream
        )

    # --- producing -----------------------------------------------------------------------------------

    def enqueue(self, job: Job) -> None:
        k = self._keys
        self._run(
            lambda: self._scripts.enqueue(
                keys=[k.stream, k.live, k.dead], args=[job.id, job.to_json(), repr(job.enqueued_at)]
            )
        )

    # --- claiming ------------------------------------------------------------------------------------

    def claim_batch(self, consumer: str, max_jobs: int, timeout: float) -> list[Job]:
        check_worker(consumer)
        check_batch(max_jobs)
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._closed:
            next_due_ms = self._run(self._housekeeping)
            remaining = deadline - time.monotonic()
            block_ms: int | None = None
            if remaining > 0:
                wait = min(remaining, self._block_cap)
                if next_due_ms >= 0:
                    wait = min(wait, next_due_ms / 1000)
                block_ms = max(1, int(wait * 1000))
            try:
                entries = self._run(lambda b=block_ms: self._read(consumer, max_jobs, b))
            except QueueUnavailable:
                if self._closed:  # close() dropped the connection under our blocking read
                    return []
                raise
            if entries:
                jobs = self._accept(entries)
                if jobs:
                    return jobs
                continue  # those were all dead-lettered; look at the next at once
            if block_ms is None:
                return []
        return []

    def _housekeeping(self) -> int:
        """Promote due retries and reclaim expired leases; return ms until the next retry is due, or -1."""
        k = self._keys
        pipe = self._client.pipeline(transaction=False)
        self._scripts.promote(keys=[k.delayed, k.stream], args=[BATCH, _MAX_DELAY_MS], client=pipe)
        self._scripts.reclaim(
            keys=[k.stream], args=[GROUP, RECLAIMER, self._lease_ms, "0-0", BATCH], client=pipe
        )
        (_moved, next_due_ms), (_cursor, reclaimed) = pipe.execute()
        if reclaimed:
            log.warning("reclaimed %d job(s) whose lease expired (a worker died or stalled)", reclaimed)
        return int(next_due_ms)

    def _read(self, consumer: str, count: int, block_ms: int | None) -> list[tuple[str, dict[bytes, bytes]]]:
        stream = {self._keys.stream: ">"}
        reply = self._client.xreadgroup(GROUP, consumer, stream, count=count, block=block_ms)
        if not reply:
            return []
        return [(entry_id.decode(), fields or {}) for entry_id, fields in reply[0][1]]

    def _accept(self, entries: list[tuple[str, dict[bytes, bytes]]]) -> list[Job]:
        """Turn delivered entries into claimed jobs; dead-letter the ones that are not jobs."""
        decoded: list[tuple[str, Job, bytes]] = []
        for entry_id, fields in entries:
            raw = fields.get(JOB_FIELD)
            try:
                if raw is None:
                    raise MalformedJob(f"stream entry has no {JOB_FIELD.decode()!r} field")
                decoded.append((entry_id, decode_job(raw), raw))
            except MalformedJob as exc:
                log.error("dead-lettered malformed job in stream entry %s: %s", entry_id, exc.reason)
                kept = raw if raw is not None else b" ".join(k + b"=" + v for k, v in fields.items())
                self._bury(entry_id, f"entry-{entry_id}", None, f"malformed job: {exc.reason}", 0, kept)
        if not decoded:
            return []
        k = self._keys
        # Not atomic with the read: a worker dying right here leaves the entries pending and uncounted,
        # so at worst one extra attempt before the limit, never a lost job.
        counted = self._run(
            lambda: self._scripts.count(
                keys=[k.attempts, k.errors], args=[MAX_STORED_ATTEMPTS, *(job.id for _, job, _ in decoded)]
            )
        )
        jobs: list[Job] = []
        for i, (entry_id, job, raw) in enumerate(decoded):
            attempts, last_error, corrupt = int(counted[3 * i]), counted[3 * i + 1], counted[3 * i + 2]
            if attempts < 0:
                reason = f"corrupt attempt counter in the queue's storage: {_short_bytes(corrupt)}"
                log.error("dead-lettered job %s (changeset %d): %s", job.id, job.changeset_id, reason)
                self._bury(entry_id, job.id, job.changeset_id, reason, 0, raw)
            elif attempts > self._max_attempts:
                reason = f"too many attempts: claimed {attempts - 1} times, limit {self._max_attempts}"
                if last_error:
                    reason += f"; last error: {last_error.decode('utf-8', 'replace')}"
                log.warning("dead-lettered job %s (changeset %d): %s", job.id, job.changeset_id, reason)
                self._bury(entry_id, job.id, job.changeset_id, reason, attempts - 1, raw)
            else:
                jobs.append(job.claimed(attempts, entry_id))
        return jobs

    def _bury(
        self,
        entry_id: str,
        job_id: str,
        changeset_id: int | None,
        reason: str,
        attempts: int,
        raw: bytes | str,
    ) -> bool:
        k = self._keys
        died_at = time.time()
        record = json.dumps(
            {
                "job_id": job_id,
                "changeset_id": changeset_id,
                "reason": reason[:_REASON_MAX],
                "attempts": attempts,
                "died_at": died_at,
                "raw": raw_text(raw),
            }
        )
        done = self._run(
            lambda: self._scripts.dead(
                keys=[k.stream, k.live, k.attempts, k.errors, k.dead, k.dead_index],
                args=[GROUP, entry_id, job_id, record, repr(died_at)],
            )
        )
        return bool(done)

    # --- finishing -----------------------------------------------------------------------------------

    def ack(self, job: Job) -> None:
        receipt = check_claimed(job)
        k = self._keys
        done = self._run(
            lambda: self._scripts.ack(
                keys=[k.stream, k.live, k.attempts, k.errors], args=[GROUP, receipt, job.id]
            )
        )
        if not done:
            log.warning(
                "ack of job_id=%s changeset_id=%d ignored: its lease was lost to another worker",
                job.id,
                job.changeset_id,
            )

    def retry(self, job: Job, delay: float, reason: str) -> None:
        receipt = check_claimed(job)
        delay_ms = int(retry_delay(delay) * 1000)
        k = self._keys
        done = self._run(
            lambda: self._scripts.retry(
                keys=[k.stream, k.delayed, k.errors, k.attempts],
                args=[GROUP, receipt, job.id, job.to_json(), delay_ms, reason[:_REASON_MAX]],
            )
        )
        if not done:
            log.warning(
                "retry of job_id=%s changeset_id=%d ignored: its lease was lost to another worker",
                job.id,
                job.changeset_id,
            )

    def dead(self, job: Job, reason: str) -> None:
        receipt = check_claimed(job)
        if not self._bury(receipt, job.id, job.changeset_id, reason, job.attempts, job.to_json()):
            log.warning(
                "dead-lettering of job_id=%s changeset_id=%d ignored: its lease was lost to another worker",
                job.id,
                job.changeset_id,
            )

    def extend_batch(self, jobs: Sequence[Job]) -> list[Job]:
        receipts = [check_claimed(job) for job in jobs]
        if not receipts:
            return []
        renewed = self._run(
            lambda: self._scripts.extend_many(keys=[self._keys.stream], args=[GROUP, *receipts])
        )
        return [job for job, ok in zip(jobs, renewed, strict=True) if not int(ok)]

    def release(self, consumer: str) -> int:
        check_worker(consumer)
        total = 0
        while True:
            handed, looked = self._run(
                lambda: self._scripts.release(keys=[self._keys.stream], args=[GROUP, consumer, BATCH])
            )
            total += int(handed)
            if int(looked) < BATCH:
                break
        if total:
            log.warning("released %d job(s) held by consumer %s (its process died)", total, consumer)
        return total

    def reclaim_stale(self) -> int:
        total, cursor = 0, "0-0"
        while True:
            reply = self._run(
                lambda c=cursor: self._scripts.reclaim(
                    keys=[self._keys.stream], args=[GROUP, RECLAIMER, self._lease_ms, c, BATCH]
                )
            )
            cursor, count = reply[0].decode(), int(reply[1])
            total += count
            if cursor == "0-0":
                return total

    # --- inspecting ----------------------------------------------------------------------------------

    def stats(self) -> QueueStats:
        k = self._keys
        now = time.time()
        bounds = [repr(EARLIEST_PLAUSIBLE_TIME), repr(now + CLOCK_SKEW_SECONDS)]
        length, pending, delayed, dead, oldest = self._run(
            lambda: self._scripts.stats(keys=[k.stream, k.delayed, k.live, k.dead], args=[GROUP, *bounds])
        )
        try:
            age = oldest_age(float(oldest), now) if oldest else 0.0
        except ValueError:  # a score Redis prints oddly ("inf"): not a time
            age = 0.0
        return QueueStats(
            depth=max(0, int(length) - int(pending)),
            in_flight=int(pending),
            delayed=int(delayed),
            dead=int(dead),
            oldest_age_seconds=age,
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        k = self._keys

        def read() -> list[tuple[bytes, bytes | None]]:
            ids = self._client.zrange(k.dead_index, 0, limit - 1)
            return list(zip(ids, self._client.hmget(k.dead, ids), strict=True)) if ids else []

        return [_letter(record, one) for one, record in self._run(read) if record is not None]

    def requeue_dead(self, job_id: str | None = None) -> int:
        k = self._keys
        if job_id is None:
            ids = [i.decode() for i in self._run(lambda: self._client.zrange(k.dead_index, 0, -1))]
        else:
            ids = [job_id]
        requeued = 0
        for one in ids:
            record = self._run(lambda one=one: self._client.hget(k.dead, one))
            if record is None:
                continue
            try:
                job = decode_job(_letter(record, one.encode()).raw)
            except MalformedJob:
                continue  # requeuing garbage would only kill it again
            fresh = Job(id=job.id, changeset_id=job.changeset_id, enqueued_at=time.time())
            requeued += self._run(
                lambda one=one, record=record, fresh=fresh: self._scripts.requeue(
                    keys=[k.dead, k.dead_index, k.live, k.attempts, k.stream],
                    args=[one, record, fresh.to_json(), repr(fresh.enqueued_at)],
                )
            )
        return requeued

    def purge_dead(self, job_id: str | None = None) -> int:
        k = self._keys
        if job_id is not None:
            return int(self._run(lambda: self._scripts.discard(keys=[k.dead, k.dead_index], args=[job_id])))
        return int(self._run(lambda: self._scripts.purge(keys=[k.dead, k.dead_index])))

    def ping(self) -> None:
        self._run(self._client.ping)

    def close(self) -> None:
        self._closed = True  # a claim blocked in another thread returns None within a second
        if self._owns_client:
            self._client.close()


def _letter(record: bytes, job_id: bytes) -> DeadLetter:
    """A dead-letter record as stored; one that is not herald's JSON is shown as it is, not raised on."""
    try:
        data = json.loads(record)
        letter = DeadLetter(
            job_id=str(data["job_id"]),
            changeset_id=data["changeset_id"] if type(data["changeset_id"]) is int else None,
            reason=str(data["reason"]),
            attempts=int(data["attempts"]),
            died_at=float(data["died_at"]),
            raw=str(data["raw"]),
        )
    except (ValueError, TypeError, KeyError, OverflowError):
        return DeadLetter(
            job_id=job_id.decode("utf-8", "backslashreplace"),
            changeset_id=None,
            reason="unreadable dead-letter record (not written by herald)",
            attempts=0,
            died_at=0.0,
            raw=raw_text(record),
        )
    return letter


def _short_bytes(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
