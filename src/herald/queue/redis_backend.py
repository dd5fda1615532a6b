"""The production queue: Redis streams, one per shard, each read through one consumer group.

Where each job lives, in its changeset's shard (keys in :mod:`herald.queue.keys`)::

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

Shards: every script touches one shard's keys only (one hash tag, so one Redis Cluster slot). A claim
reads the shards one after the other, starting from the next shard each time, so none starves; when all
are empty it blocks on the doorbell, a tiny capped stream that every push rings after adding its job
(Cluster cannot block on streams of different slots with one command). The doorbell's last id is read
before the shards are looked at, so a push that lands after the look still wakes the claimer.

Redis may lose everything (a restart without persistence) or some recent writes (a failover: replication
is asynchronous): a lost consumer group is then recreated on the spot, from the start of the stream, and
the tracker's outbox relay re-pushes what the queue should hold and does not.
"""

from __future__ import annotations

import contextlib
import heapq
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
from herald.queue.errors import MalformedJob, QueueError
from herald.queue.keys import GROUP, JOB_FIELD, RECLAIMER, RedisKeys, ShardKeys
from herald.queue.redis_client import RedisClient, connect, is_cluster, translate_errors
from herald.queue.redis_scripts import Scripts

__all__ = ["RedisQueue"]

log = logging.getLogger("herald.queue")

T = TypeVar("T")

#: Longest single blocking read: due retries and expired leases are looked at this often while idle.
MAX_BLOCK_SECONDS = 1.0
#: Entries moved per script call, so one call never holds the server for long.
BATCH = 100
#: The doorbell keeps about this many entries (trimmed approximately, so a few hundred at most).
BELL_LENGTH = 16
_REASON_MAX = 2000
_MAX_DELAY_MS = int(MAX_DELAY_SECONDS * 1000)


class RedisQueue(Queue):
    """The :class:`~herald.queue.base.Queue` on Redis streams. Safe to share between threads."""

    def __init__(self, settings: Settings, client: RedisClient | None = None) -> None:
        self._keys = RedisKeys(settings.redis_namespace, settings.queue_shards)
        self._shards = self._keys.by_index
        self._owns_client = client is None
        self._client = connect(settings) if client is None else client
        # Cluster pipelines cannot reload a script the server forgot, and their commands go to several
        # nodes anyway: in Cluster every call is its own round trip.
        self._pipelines = not is_cluster(self._client)
        self._scripts = Scripts.register(self._client)
        self._lease_ms = max(1, int(settings.lease_seconds * 1000))
        self._max_attempts = settings.job_max_attempts
        # A blocked claimer also watches for expired leases, so it must wake several times per lease.
        self._block_cap = min(MAX_BLOCK_SECONDS, settings.lease_seconds / 4)
        self._next_start = 0  # the shard the next claim looks at first
        self._next_housekeeping = 0.0  # monotonic time at which due retries and leases are looked at
        self._closed = False

    @property
    def keys(self) -> RedisKeys:
        """The keys of this queue."""
        return self._keys

    # --- plumbing ------------------------------------------------------------------------------------

    def _run(self, op: Callable[[], T]) -> T:
        """Run ``op`` with errors translated, recreating the consumer groups if Redis lost them."""
        with translate_errors():
            try:
                return op()
            except redis.exceptions.ResponseError as exc:
                # NOGROUP: the group is gone (Redis lost its data, or a failover lost its creation).
                # UNBLOCKED: the stream was deleted under a blocked read. Either way: recreate, carry on.
                if "NOGROUP" not in str(exc) and not str(exc).startswith("UNBLOCKED"):
                    raise
            for shard in self._shards:
                self._create_group(shard)
            return op()

    def _create_group(self, shard: ShardKeys) -> None:
        # From "0", not "$": jobs pushed after Redis lost the group but before this call must not be
        # skipped. Entries already handled are deleted on ack, so "0" re-delivers nothing that is done.
        try:
            self._client.xgroup_create(shard.stream, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # another worker created it first: fine
                raise
            return
        log.info("created consumer group %s on %s (first start, or Redis lost its data)", GROUP, shard.stream)

    def _ring(self) -> None:
        """Wake the idle claimers: something was added to a stream outside a claim."""
        self._run(self._ring_now)

    def _ring_now(self) -> None:
        self._client.xadd(self._keys.bell, {b"r": b"1"}, maxlen=BELL_LENGTH, approximate=True)

    def _receipt(self, job: Job) -> tuple[ShardKeys, str]:
        """The shard and stream entry id a claimed job's receipt names."""
        shard, _, entry_id = check_claimed(job).partition("/")
        if not shard.isdigit() or not entry_id or int(shard) >= len(self._shards):
            raise ValueError(f"job {job.id} carries a receipt of another queue: {job.receipt!r}")
        return self._shards[int(shard)], entry_id

    # --- producing -----------------------------------------------------------------------------------

    def enqueue(self, job: Job) -> None:
        k = self._keys.shard_for(job.changeset_id)
        keys, args = [k.stream, k.live, k.dead], [job.id, job.to_json(), repr(job.enqueued_at)]
        if not self._pipelines:
            if self._run(lambda: self._scripts.enqueue(keys=keys, args=args)):
                self._ring()
            return

        def push() -> None:
            # One round trip: the front end's push must stay as cheap as it was with one stream.
            pipe = self._client.pipeline(transaction=False)
            self._scripts.enqueue(keys=keys, args=args, client=pipe)
            pipe.xadd(self._keys.bell, {b"r": b"1"}, maxlen=BELL_LENGTH, approximate=True)
            pipe.execute()

        self._run(push)

    # --- claiming ------------------------------------------------------------------------------------

    def claim_batch(self, consumer: str, max_jobs: int, timeout: float) -> list[Job]:
        check_worker(consumer)
        check_batch(max_jobs)
        try:
            return self._claim(consumer, max_jobs, time.monotonic() + max(0.0, timeout))
        except QueueError:
            if self._closed:  # close() dropped the connections under our blocking read
                return []
            raise

    def _claim(self, consumer: str, max_jobs: int, deadline: float) -> list[Job]:
        mark: str | None = None
        while not self._closed:
            next_due = self._housekeeping_if_due()
            if mark is None:
                mark = self._run(self._bell_mark)
            entries = self._run(lambda: self._sweep(consumer, max_jobs))
            if entries:
                jobs = self._accept(entries)
                if jobs:
                    return jobs
                continue  # those were all dead-lettered; look at the next at once
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            wait = min(remaining, self._block_cap, max(0.0, next_due - time.monotonic()))
            mark = self._run(lambda m=mark, w=wait: self._wait_bell(m, max(1, int(w * 1000))))
        return []

    def _housekeeping_if_due(self) -> float:
        """Promote due retries and reclaim expired leases in every shard, at most every block cap (or
        sooner when a retry falls due); return the monotonic time of the next look."""
        now = time.monotonic()
        if now < self._next_housekeeping:
            return self._next_housekeeping
        soonest_ms = -1
        reclaimed = 0
        for k in self._shards:
            next_due_ms, count = self._run(lambda k=k: self._housekeeping(k))
            reclaimed += count
            if next_due_ms >= 0:
                soonest_ms = next_due_ms if soonest_ms < 0 else min(soonest_ms, next_due_ms)
        if reclaimed:
            log.warning("reclaimed %d job(s) whose lease expired (a worker died or stalled)", reclaimed)
        wait = self._block_cap if soonest_ms < 0 else min(self._block_cap, soonest_ms / 1000)
        self._next_housekeeping = now + wait
        return self._next_housekeeping

    def _housekeeping(self, k: ShardKeys) -> tuple[int, int]:
        """One shard's due retries and expired leases; returns (ms until its next retry or -1, reclaimed)."""
        promote_args = [BATCH, _MAX_DELAY_MS]
        reclaim_args = [GROUP, RECLAIMER, self._lease_ms, "0-0", BATCH]
        if self._pipelines:
            pipe = self._client.pipeline(transaction=False)
            self._scripts.promote(keys=[k.delayed, k.stream], args=promote_args, client=pipe)
            self._scripts.reclaim(keys=[k.stream], args=reclaim_args, client=pipe)
            (_moved, next_due_ms), (_cursor, reclaimed) = pipe.execute()
        else:
            _moved, next_due_ms = self._scripts.promote(keys=[k.delayed, k.stream], args=promote_args)
            _cursor, reclaimed = self._scripts.reclaim(keys=[k.stream], args=reclaim_args)
        return int(next_due_ms), int(reclaimed)

    def _bell_mark(self) -> str:
        last = self._client.xrevrange(self._keys.bell, count=1)
        return last[0][0].decode() if last else "0-0"

    def _wait_bell(self, mark: str, block_ms: int) -> str:
        """Block until the doorbell rings after ``mark`` (or ``block_ms`` pass); return the new mark."""
        reply = self._client.xread({self._keys.bell: mark}, count=BELL_LENGTH, block=block_ms)
        if not reply:
            return mark
        return reply[0][1][-1][0].decode()

    def _sweep(self, consumer: str, count: int) -> list[tuple[ShardKeys, str, dict[bytes, bytes]]]:
        """Read up to ``count`` new entries, shard after shard, from a start that moves on each call."""
        start = self._next_start % len(self._shards)
        self._next_start = start + 1
        found: list[tuple[ShardKeys, str, dict[bytes, bytes]]] = []
        for i in range(len(self._shards)):
            k = self._shards[(start + i) % len(self._shards)]
            try:
                reply = self._client.xreadgroup(GROUP, consumer, {k.stream: ">"}, count=count - len(found))
            except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
                if found:  # hand out what was read (it is ours now); this shard is tried on the next claim
                    break
                raise
            if reply:
                found.extend((k, entry_id.decode(), fields or {}) for entry_id, fields in reply[0][1])
                if len(found) >= count:
                    break
        return found

    def _accept(self, entries: list[tuple[ShardKeys, str, dict[bytes, bytes]]]) -> list[Job]:
        """Turn delivered entries into claimed jobs; dead-letter the ones that are not jobs."""
        by_shard: dict[int, list[tuple[str, Job, bytes]]] = {}
        for k, entry_id, fields in entries:
            raw = fields.get(JOB_FIELD)
            try:
                if raw is None:
                    raise MalformedJob(f"stream entry has no {JOB_FIELD.decode()!r} field")
                by_shard.setdefault(k.index, []).append((entry_id, decode_job(raw), raw))
            except MalformedJob as exc:
                log.error("dead-lettered malformed job in stream entry %s: %s", entry_id, exc.reason)
                kept = raw if raw is not None else b" ".join(k + b"=" + v for k, v in fields.items())
                self._bury(
                    k, entry_id, f"entry-{k.index}/{entry_id}", None, f"malformed job: {exc.reason}", 0, kept
                )
        jobs: list[Job] = []
        for index, decoded in by_shard.items():
            jobs.extend(self._count(self._shards[index], decoded))
        return jobs

    def _count(self, k: ShardKeys, decoded: list[tuple[str, Job, bytes]]) -> list[Job]:
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
                self._bury(k, entry_id, job.id, job.changeset_id, reason, 0, raw)
            elif attempts > self._max_attempts:
                reason = f"too many attempts: claimed {attempts - 1} times, limit {self._max_attempts}"
                if last_error:
                    reason += f"; last error: {last_error.decode('utf-8', 'replace')}"
                log.warning("dead-lettered job %s (changeset %d): %s", job.id, job.changeset_id, reason)
                self._bury(k, entry_id, job.id, job.changeset_id, reason, attempts - 1, raw)
            else:
                jobs.append(job.claimed(attempts, f"{k.index}/{entry_id}"))
        return jobs

    def _bury(
        self,
        k: ShardKeys,
        entry_id: str,
        job_id: str,
        changeset_id: int | None,
        reason: str,
        attempts: int,
        raw: bytes | str,
    ) -> bool:
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
        k, entry_id = self._receipt(job)
        done = self._run(
            lambda: self._scripts.ack(
                keys=[k.stream, k.live, k.attempts, k.errors], args=[GROUP, entry_id, job.id]
            )
        )
        if not done:
            log.warning(
                "ack of job_id=%s changeset_id=%d ignored: its lease was lost to another worker",
                job.id,
                job.changeset_id,
            )

    def retry(self, job: Job, delay: float, reason: str) -> None:
        k, entry_id = self._receipt(job)
        delay_ms = int(retry_delay(delay) * 1000)
        done = self._run(
            lambda: self._scripts.retry(
                keys=[k.stream, k.delayed, k.errors, k.attempts],
                args=[GROUP, entry_id, job.id, job.to_json(), delay_ms, reason[:_REASON_MAX]],
            )
        )
        if not done:
            log.warning(
                "retry of job_id=%s changeset_id=%d ignored: its lease was lost to another worker",
                job.id,
                job.changeset_id,
            )
        elif delay_ms <= 0:
            self._ring()
        else:
            # Claimers sleep until the next due retry they know of; this one may be sooner.
            self._next_housekeeping = min(self._next_housekeeping, time.monotonic() + delay_ms / 1000)

    def dead(self, job: Job, reason: str) -> None:
        k, entry_id = self._receipt(job)
        if not self._bury(k, entry_id, job.id, job.changeset_id, reason, job.attempts, job.to_json()):
            log.warning(
                "dead-lettering of job_id=%s changeset_id=%d ignored: its lease was lost to another worker",
                job.id,
                job.changeset_id,
            )

    def extend_batch(self, jobs: Sequence[Job]) -> list[Job]:
        by_shard: dict[int, list[tuple[Job, str]]] = {}
        for job in jobs:
            k, entry_id = self._receipt(job)
            by_shard.setdefault(k.index, []).append((job, entry_id))
        lost: set[str] = set()
        for index, held in by_shard.items():
            stream = self._shards[index].stream
            renewed = self._run(
                lambda s=stream, h=held: self._scripts.extend_many(keys=[s], args=[GROUP, *(e for _, e in h)])
            )
            lost.update(job.id for (job, _), ok in zip(held, renewed, strict=True) if not int(ok))
        return [job for job in jobs if job.id in lost]

    def release(self, consumer: str) -> int:
        check_worker(consumer)
        total = 0
        for k in self._shards:
            while True:
                handed, looked = self._run(
                    lambda k=k: self._scripts.release(keys=[k.stream], args=[GROUP, consumer, BATCH])
                )
                total += int(handed)
                if int(looked) < BATCH:
                    break
        if total:
            log.warning("released %d job(s) held by consumer %s (its process died)", total, consumer)
            self._ring()
        return total

    def reclaim_stale(self) -> int:
        total = 0
        for k in self._shards:
            cursor = "0-0"
            while True:
                reply = self._run(
                    lambda k=k, c=cursor: self._scripts.reclaim(
                        keys=[k.stream], args=[GROUP, RECLAIMER, self._lease_ms, c, BATCH]
                    )
                )
                cursor, count = reply[0].decode(), int(reply[1])
                total += count
                if cursor == "0-0":
                    break
        if total:
            self._ring()
        return total

    # --- inspecting ----------------------------------------------------------------------------------

    def stats(self) -> QueueStats:
        now = time.time()
        bounds = [repr(EARLIEST_PLAUSIBLE_TIME), repr(now + CLOCK_SKEW_SECONDS)]
        depth = in_flight = delayed = dead = 0
        age = 0.0
        for k in self._shards:
            length, pending, waiting, buried, oldest = self._run(
                lambda k=k: self._scripts.stats(
                    keys=[k.stream, k.delayed, k.live, k.dead], args=[GROUP, *bounds]
                )
            )
            depth += max(0, int(length) - int(pending))
            in_flight += int(pending)
            delayed += int(waiting)
            dead += int(buried)
            with contextlib.suppress(ValueError):  # a score Redis prints oddly ("inf"): not a time
                age = max(age, oldest_age(float(oldest), now) if oldest else 0.0)
        return QueueStats(
            depth=depth, in_flight=in_flight, delayed=delayed, dead=dead, oldest_age_seconds=age
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        # The first ``limit`` of each shard, merged by time of death: the first ``limit`` of them all.
        heads: list[tuple[float, int, bytes]] = []
        for k in self._shards:
            listed = self._run(lambda k=k: self._client.zrange(k.dead_index, 0, limit - 1, withscores=True))
            heads.extend((float(score), k.index, one) for one, score in listed)
        chosen = heapq.nsmallest(limit, heads)
        letters: list[DeadLetter] = []
        for _score, index, one in chosen:
            k = self._shards[index]
            record = self._run(lambda k=k, one=one: self._client.hget(k.dead, one))
            if record is not None:
                letters.append(_letter(record, one))
        return letters

    def requeue_dead(self, job_id: str | None = None) -> int:
        requeued = 0
        for k in self._shards:
            if job_id is None:
                ids = [i.decode() for i in self._run(lambda k=k: self._client.zrange(k.dead_index, 0, -1))]
            else:
                ids = [job_id]
            for one in ids:
                requeued += self._requeue_one(k, one)
        if requeued:
            self._ring()
        return requeued

    def _requeue_one(self, k: ShardKeys, one: str) -> int:
        record = self._run(lambda: self._client.hget(k.dead, one))
        if record is None:
            return 0
        try:
            job = decode_job(_letter(record, one.encode()).raw)
        except MalformedJob:
            return 0  # requeuing garbage would only kill it again
        fresh = Job(id=job.id, changeset_id=job.changeset_id, enqueued_at=time.time())
        # Back into the shard it died in, where its id is known (the changeset's shard, unless
        # queue_shards changed since: then a relay push of the same job may add a second copy in the new
        # shard, which the delivery run's lock and ledger make harmless).
        return int(
            self._run(
                lambda: self._scripts.requeue(
                    keys=[k.dead, k.dead_index, k.live, k.attempts, k.stream],
                    args=[one, record, fresh.to_json(), repr(fresh.enqueued_at)],
                )
            )
        )

    def purge_dead(self, job_id: str | None = None) -> int:
        if job_id is not None:
            # A dead letter's shard is not in its id: ask each shard (one small script per shard).
            return sum(
                int(self._run(lambda k=k: self._scripts.discard(keys=[k.dead, k.dead_index], args=[job_id])))
                for k in self._shards
            )
        return sum(
            int(self._run(lambda k=k: self._scripts.purge(keys=[k.dead, k.dead_index]))) for k in self._shards
        )

    def ping(self) -> None:
        if self._pipelines:
            self._run(self._client.ping)
            return
        # In Cluster, PING goes to one node of the client's choice (maybe a dead one it has not dropped
        # yet); what matters is that every master holding a shard answers.
        for k in self._shards:
            self._run(lambda k=k: self._client.exists(k.stream))

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
