"""The production queue: a Redis stream read through one consumer group.

Where each job lives (keys in :mod:`herald.queue.keys`)::

    enqueue ──XADD──> stream ──XREADGROUP──> pending (in flight, leased) ──ack──> gone
                        ▲  ▲                    │  │
                        │  └── reclaim: idle > lease, re-added under a new id
                        │                       │  └──dead──> dead letters
                     promote <── delayed <──retry

A lease is the idle time of the pending entry: ``extend`` resets it, and an entry idle longer than
``lease_seconds`` is re-added to the stream (which voids the old owner's receipt). Claim counts live in a
hash rather than in XPENDING's delivery count, because retries and reclaims re-add the entry and restart
that count.

Redis may lose everything (a restart without persistence): the consumer group is then recreated on the
spot, from the start of the stream, and the tracker's outbox re-pushes what was queued.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import TypeVar

import redis

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
from herald.queue.errors import LeaseLost, MalformedJob, QueueUnavailable
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

    def claim(self, worker: str, timeout: float) -> Job | None:
        check_worker(worker)
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
                entry = self._run(lambda b=block_ms: self._read(worker, b))
            except QueueUnavailable:
                if self._closed:  # close() dropped the connection under our blocking read
                    return None
                raise
            if entry is not None:
                job = self._accept(*entry)
                if job is not None:
                    return job
                continue  # that one was dead-lettered; look at the next at once
            if block_ms is None:
                return None
        return None

    def _housekeeping(self) -> int:
        """Promote due retries and reclaim expired leases; return ms until the next retry is due, or -1."""
        k = self._keys
        pipe = self._client.pipeline(transaction=False)
        self._scripts.promote(keys=[k.delayed, k.stream], args=[BATCH], client=pipe)
        self._scripts.reclaim(
            keys=[k.stream], args=[GROUP, RECLAIMER, self._lease_ms, "0-0", BATCH], client=pipe
        )
        (_moved, next_due_ms), (_cursor, reclaimed) = pipe.execute()
        if reclaimed:
            log.warning("reclaimed %d job(s) whose lease expired (a worker died or stalled)", reclaimed)
        return int(next_due_ms)

    def _read(self, worker: str, block_ms: int | None) -> tuple[str, dict[bytes, bytes]] | None:
        reply = self._client.xreadgroup(GROUP, worker, {self._keys.stream: ">"}, count=1, block=block_ms)
        if not reply or not reply[0][1]:
            return None
        entry_id, fields = reply[0][1][0]
        return entry_id.decode(), fields

    def _accept(self, entry_id: str, fields: dict[bytes, bytes]) -> Job | None:
        """Turn a delivered entry into a claimed job, or dead-letter it and return None."""
        raw = fields.get(JOB_FIELD)
        try:
            if raw is None:
                raise MalformedJob(f"stream entry has no {JOB_FIELD.decode()!r} field")
            job = decode_job(raw)
        except MalformedJob as exc:
            log.error("dead-lettered malformed job in stream entry %s: %s", entry_id, exc.reason)
            kept = raw if raw is not None else b" ".join(k + b"=" + v for k, v in fields.items())
            self._bury(entry_id, f"entry-{entry_id}", None, f"malformed job: {exc.reason}", 0, kept)
            return None

        def count() -> tuple[int, bytes | None]:
            pipe = self._client.pipeline(transaction=True)
            pipe.hincrby(self._keys.attempts, job.id, 1)
            pipe.hget(self._keys.errors, job.id)
            attempts, last_error = pipe.execute()
            return int(attempts), last_error

        # Not atomic with the read: a worker dying right here leaves the entry pending and uncounted,
        # so at worst one extra attempt before the limit, never a lost job.
        attempts, last_error = self._run(count)
        if attempts > self._max_attempts:
            reason = f"too many attempts: claimed {attempts - 1} times, limit {self._max_attempts}"
            if last_error:
                reason += f"; last error: {last_error.decode('utf-8', 'replace')}"
            log.warning("dead-lettered job %s (changeset %d): %s", job.id, job.changeset_id, reason)
            self._bury(entry_id, job.id, job.changeset_id, reason, attempts - 1, raw)
            return None
        return job.claimed(attempts, entry_id)

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
            log.warning("ack of job %s ignored: its lease was lost to another worker", job.id)

    def retry(self, job: Job, delay: float, reason: str) -> None:
        receipt = check_claimed(job)
        delay_ms = int(delay * 1000) if math.isfinite(delay) and delay > 0 else 0
        k = self._keys
        done = self._run(
            lambda: self._scripts.retry(
                keys=[k.stream, k.delayed, k.errors],
                args=[GROUP, receipt, job.id, job.to_json(), delay_ms, reason[:_REASON_MAX]],
            )
        )
        if not done:
            log.warning("retry of job %s ignored: its lease was lost to another worker", job.id)

    def dead(self, job: Job, reason: str) -> None:
        receipt = check_claimed(job)
        if not self._bury(receipt, job.id, job.changeset_id, reason, job.attempts, job.to_json()):
            log.warning("dead-lettering of job %s ignored: its lease was lost to another worker", job.id)

    def extend(self, job: Job) -> None:
        receipt = check_claimed(job)
        if not self._run(lambda: self._scripts.extend(keys=[self._keys.stream], args=[GROUP, receipt])):
            raise LeaseLost(f"job {job.id} is no longer leased to this worker")

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
        length, pending, delayed, dead, oldest = self._run(
            lambda: self._scripts.stats(keys=[k.stream, k.delayed, k.live, k.dead], args=[GROUP])
        )
        age = max(0.0, time.time() - float(oldest)) if oldest else 0.0
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

        def read() -> list[bytes | None]:
            ids = self._client.zrange(k.dead_index, 0, limit - 1)
            return self._client.hmget(k.dead, ids) if ids else []

        return [_letter(record) for record in self._run(read) if record is not None]

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
                job = decode_job(_letter(record).raw)
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

    def purge_dead(self) -> int:
        k = self._keys
        return int(self._run(lambda: self._scripts.purge(keys=[k.dead, k.dead_index])))

    def ping(self) -> None:
        self._run(self._client.ping)

    def close(self) -> None:
        self._closed = True  # a claim blocked in another thread returns None within a second
        if self._owns_client:
            self._client.close()


def _letter(record: bytes) -> DeadLetter:
    data = json.loads(record)
    return DeadLetter(
        job_id=data["job_id"],
        changeset_id=data["changeset_id"],
        reason=data["reason"],
        attempts=data["attempts"],
        died_at=data["died_at"],
        raw=data["raw"],
    )
