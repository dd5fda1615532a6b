"""The queue contract: the job, its wire format, and what every backend promises.

A job carries ids only (the changeset to notify about), never content: the worker reads the rest from the
tracker, with the recipient's permissions. On the wire a job is a small JSON object with a schema version::

    {"v": 1, "id": "<uuid4 hex>", "changeset_id": 42, "enqueued_at": 1700000000.5}

It is never pickled: a queue is shared state, and unpickling what someone else wrote runs their code.
"""

from __future__ import annotations

import abc
import json
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from herald.queue.errors import LeaseLost, MalformedJob

__all__ = [
    "MAX_BATCH",
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "DeadLetter",
    "Job",
    "Queue",
    "QueueStats",
    "decode_job",
]

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_ID = 2**63 - 1  # ids live in BIGINT columns
#: The latest time a job may carry (the year 3000): every datetime conversion downstream can handle it,
#: where a finite but absurd ``enqueued_at = 1e300`` raised OverflowError in the worker.
LATEST_TIME = 32_503_680_000.0
#: Times before 2000 cannot come from herald's clock; ``stats`` ignores them rather than report a job
#: 57 years old because something wrote a 0 into the queue's storage.
EARLIEST_PLAUSIBLE_TIME = 946_684_800.0
#: How far ahead of this host's clock another host's may plausibly run.
CLOCK_SKEW_SECONDS = 86_400.0
#: The longest retry delay the queue keeps; longer ones are cut to this (a year: no retry policy waits more).
MAX_DELAY_SECONDS = 366 * 86_400.0
#: The most jobs one ``claim_batch`` may ask for.
MAX_BATCH = 1000
#: Attempt counters above this are not counters but garbage (a real poison job dies at job_max_attempts).
MAX_STORED_ATTEMPTS = 1_000_000
_FIELDS = frozenset({"v", "id", "changeset_id", "enqueued_at"})
_JOB_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Job:
    """One unit of work: notify everyone concerned by changeset ``changeset_id``.

    ``attempts`` and ``receipt`` are not part of the payload: the queue sets them when a worker claims the
    job. ``attempts`` counts the claims since the job was last settled (``retry``), this one included: 1 for
    a job that never crashed anyone, more only when earlier claims ended with no verdict (the worker died,
    hung past its lease, or was released). ``receipt`` names this one claim in the backend (a stream entry
    id, or a row id with its fence) and is what ``ack``/``retry``/``dead``/``extend`` act on.
    """

    id: str
    changeset_id: int
    enqueued_at: float
    attempts: int = 0
    receipt: str | None = None

    def __post_init__(self) -> None:
        reason = _field_problem(self.id, self.changeset_id, self.enqueued_at)
        if reason is None and (type(self.attempts) is not int or self.attempts < 0):
            reason = f"attempts must be a whole number >= 0, not {self.attempts!r}"
        if reason is not None:
            raise ValueError(reason)

    @classmethod
    def new(cls, changeset_id: int) -> Job:
        """A fresh job for ``changeset_id`` with a random id, stamped now."""
        return cls(id=uuid.uuid4().hex, changeset_id=changeset_id, enqueued_at=time.time())

    def to_json(self) -> str:
        """The wire form (schema version 1); ``attempts`` and ``receipt`` stay out of it."""
        return json.dumps(
            {
                "v": SCHEMA_VERSION,
                "id": self.id,
                "changeset_id": self.changeset_id,
                "enqueued_at": self.enqueued_at,
            },
            separators=(",", ":"),
        )

    def claimed(self, attempts: int, receipt: str) -> Job:
        """This job as handed to a worker by a backend."""
        return replace(self, attempts=attempts, receipt=receipt)


def _field_problem(job_id: object, changeset_id: object, enqueued_at: object) -> str | None:
    """Why these field values do not make a job, or None. Shared by the constructor and the decoder."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        return f"id must be 32 lowercase hex digits, not {_short(job_id)}"
    # bool is an int in Python but never a valid id or time: reject True/False explicitly.
    if type(changeset_id) is not int or not 1 <= changeset_id <= MAX_ID:
        return f"changeset_id must be a whole number from 1 to {MAX_ID}, not {_short(changeset_id)}"
    if type(enqueued_at) not in (int, float) or not 0 <= enqueued_at <= LATEST_TIME:  # type: ignore[operator]
        return f"enqueued_at must be a unix time from 0 to {LATEST_TIME:.0f}, not {_short(enqueued_at)}"
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _reject_constant(name: str) -> Any:
    raise MalformedJob(f"payload contains {name}, which is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # Two parsers may keep different copies of a duplicated key; refuse rather than pick one.
        raise MalformedJob("payload has a duplicated key")
    return obj


def decode_job(raw: bytes | bytearray | memoryview | str) -> Job:
    """Parse a payload strictly; raise :class:`MalformedJob` with a one-line reason if it is not a job.

    Strict means: at most :data:`MAX_PAYLOAD_BYTES`, UTF-8, one JSON object with exactly the fields of
    schema version 1, ids that are ids (not bools, not negative, not strings of digits) and a finite time.
    """
    if isinstance(raw, str):
        if len(raw) > MAX_PAYLOAD_BYTES:
            raise MalformedJob(f"payload is larger than {MAX_PAYLOAD_BYTES} bytes")
        data = raw.encode("utf-8", "surrogatepass")
    elif isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
    else:
        raise MalformedJob(f"payload is a {type(raw).__name__}, not bytes or text")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise MalformedJob(f"payload is {len(data)} bytes, larger than {MAX_PAYLOAD_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedJob("payload is not UTF-8") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except MalformedJob:
        raise
    except (ValueError, RecursionError) as exc:
        raise MalformedJob(f"payload is not JSON: {str(exc)[:80]}") from None
    if not isinstance(obj, dict):
        raise MalformedJob(f"payload is a JSON {type(obj).__name__}, not an object")
    version = obj.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise MalformedJob(f"unsupported schema version v={_short(version)} (this herald reads v=1)")
    if missing := _FIELDS - obj.keys():
        raise MalformedJob(f"payload is missing {', '.join(sorted(missing))}")
    if extra := obj.keys() - _FIELDS:
        raise MalformedJob(f"payload has unexpected field(s) {_short(sorted(extra))}")
    reason = _field_problem(obj["id"], obj["changeset_id"], obj["enqueued_at"])
    if reason is not None:
        raise MalformedJob(reason)
    return Job(id=obj["id"], changeset_id=obj["changeset_id"], enqueued_at=float(obj["enqueued_at"]))


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of the queue, for ``herald check``, the metrics and the admin page.

    ``depth``: ready to be claimed now. ``in_flight``: claimed and not yet acked (leases that expired
    count here until they are reclaimed). ``delayed``: waiting for a retry delay. ``dead``: dead letters.
    ``oldest_age_seconds``: age, from its first enqueue, of the oldest job that is not done (ready, in
    flight or delayed); 0.0 when there is none.
    """

    depth: int
    in_flight: int
    delayed: int
    dead: int
    oldest_age_seconds: float


@dataclass(frozen=True)
class DeadLetter:
    """A job the queue gave up on, with why. ``raw`` is the payload as stored (kept for malformed ones).

    ``changeset_id`` is None when the payload was too broken to tell.
    """

    job_id: str
    changeset_id: int | None
    reason: str
    attempts: int
    died_at: float
    raw: str


class Queue(abc.ABC):
    """The persistent job queue. Both backends keep these promises and pass one contract test suite.

    - A claimed job carries a lease of ``settings.lease_seconds``; a worker that dies loses its jobs to
      another worker once the lease runs out. ``extend``/``extend_batch`` renew it while a long job runs,
      and ``release`` hands a dead worker's jobs back at once (the supervisor calls it when it sees one of
      its processes die; the lease is the fallback for a host that vanished).
    - ``attempts`` counts the claims since the job was last settled. ``retry`` settles it (the worker
      finished and gave a verdict), so it resets the count: a job retried for days during an SMTP outage
      is never dead-lettered by this counter. Claims that end in no verdict (lease expired, ``release``)
      keep counting, and a claim that would exceed ``settings.job_max_attempts`` dead-letters the job
      ("too many attempts") instead of returning it, so a poison job that crashes or hangs its worker
      cannot loop.
    - Whatever is in the queue's storage, a claim never fails on it and never loops on it: an entry that
      is not a job (malformed payload, corrupt counters or times) is dead-lettered with its reason and the
      claim goes on with the others. ``stats`` ignores times that cannot be real.
    - ``ack``, ``retry`` and ``dead`` on a job whose lease was lost to another worker (expired, or
      released) change nothing; ``extend`` raises LeaseLost and ``extend_batch`` reports it.
    - Enqueueing a job whose id the queue already holds (in any state, dead included) changes nothing.
    - Failures to reach the server raise :class:`~herald.queue.errors.QueueUnavailable`; nothing else
      does.

    For a concurrent worker: one claimer thread calls ``claim_batch`` to fill free slots, one lease keeper
    per process calls ``extend_batch`` for every job in flight, each one round trip.

    An instance is safe to share between threads.
    """

    @abc.abstractmethod
    def enqueue(self, job: Job) -> None:
        """Add ``job``; it is ready at once."""

    def claim(self, worker: str, timeout: float) -> Job | None:
        """Take the next ready job for ``worker``, waiting up to ``timeout`` seconds for one.

        Returns as soon as a job is pushed (no polling interval, except SQLite: see the SQL backend).
        ``timeout=0`` does not wait. Returns None when nothing came in time.
        """
        jobs = self.claim_batch(worker, 1, timeout)
        return jobs[0] if jobs else None

    @abc.abstractmethod
    def claim_batch(self, consumer: str, max_jobs: int, timeout: float) -> list[Job]:
        """Take up to ``max_jobs`` ready jobs for ``consumer`` in one round trip (about), oldest first
        (within each shard, for a queue split into shards: the jobs of one changeset keep their order).

        Waits up to ``timeout`` seconds for at least one, and returns as soon as there is one: it does not
        wait to fill the batch. Returns an empty list when nothing came in time. Due retries and expired
        leases are taken as by ``claim``. ``max_jobs`` is 1 to :data:`MAX_BATCH`.
        """

    @abc.abstractmethod
    def extend_batch(self, jobs: Sequence[Job]) -> list[Job]:
        """Renew the leases of all ``jobs`` (claimed ones) in one round trip; return those whose lease was
        lost (expired and taken back, released, or settled), which their worker should stop working on."""

    @abc.abstractmethod
    def release(self, consumer: str) -> int:
        """Hand back at once every job ``consumer`` holds (claimed, not settled); return how many.

        The next claim by anyone gets them, without waiting for their leases to run out. Their attempt
        counts are kept (a job that kills every worker that takes it still dies as poison), and the
        released consumer's late ``ack``/``retry``/``dead`` change nothing. Releasing a consumer that holds
        nothing returns 0.
        """

    @abc.abstractmethod
    def ack(self, job: Job) -> None:
        """The job is done: forget it."""

    @abc.abstractmethod
    def retry(self, job: Job, delay: float, reason: str) -> None:
        """Give the job back, to be delivered again after ``delay`` seconds; no worker waits for it.

        The job was settled, so its attempt count starts again from 0. ``reason`` is kept and quoted if the
        job later dies. Delays are cut to :data:`MAX_DELAY_SECONDS`.
        """

    @abc.abstractmethod
    def dead(self, job: Job, reason: str) -> None:
        """Give up on the job: move it to the dead letters with ``reason``."""

    def extend(self, job: Job) -> None:
        """Renew the job's lease for another ``lease_seconds``; raise LeaseLost if it is already gone."""
        if self.extend_batch([job]):
            raise LeaseLost(f"job {job.id} is no longer leased to this worker")

    @abc.abstractmethod
    def reclaim_stale(self) -> int:
        """Put every job whose lease expired back in line; return how many. Claims also do this."""

    @abc.abstractmethod
    def stats(self) -> QueueStats:
        """Counts of ready, in-flight, delayed and dead jobs, and the age of the oldest live one."""

    @abc.abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, the oldest death first."""

    @abc.abstractmethod
    def requeue_dead(self, job_id: str | None = None) -> int:
        """Put dead letter ``job_id`` (None: all of them) back in line with a fresh attempt count.

        The job is stamped as enqueued now. Malformed payloads stay dead (they would only die again);
        purge them instead. Returns how many jobs were requeued.
        """

    @abc.abstractmethod
    def purge_dead(self, job_id: str | None = None) -> int:
        """Delete dead letter ``job_id`` (None: every dead letter); return how many were deleted."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Check the server answers; raise QueueUnavailable if not."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and background threads. The queue cannot be used afterwards.

        A ``claim`` blocked in another thread returns None soon after (within about a second), so a
        worker that is told to stop does not wait out its claim timeout.
        """

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_claimed(job: Job) -> str:
    """The job's receipt; a job that did not come from ``claim`` is a caller bug."""
    if job.receipt is None:
        raise ValueError(f"job {job.id} was not claimed from a queue (it has no receipt)")
    return job.receipt


def check_batch(max_jobs: int) -> None:
    """A batch size is a whole number from 1 to MAX_BATCH."""
    if type(max_jobs) is not int or not 1 <= max_jobs <= MAX_BATCH:
        raise ValueError(f"max_jobs must be a whole number from 1 to {MAX_BATCH}, not {max_jobs!r}")


def retry_delay(delay: float) -> float:
    """A retry delay as stored: not negative, not NaN, at most MAX_DELAY_SECONDS."""
    if not isinstance(delay, int | float) or not delay > 0:  # NaN is not > 0
        return 0.0
    return min(float(delay), MAX_DELAY_SECONDS)


def plausible_time(value: object, now: float) -> float | None:
    """``value`` as a unix time if it can be one this herald wrote (2000 to now + clock skew), else None."""
    if type(value) not in (int, float):
        return None
    if not EARLIEST_PLAUSIBLE_TIME <= value <= now + CLOCK_SKEW_SECONDS:  # type: ignore[operator]
        return None
    return float(value)  # type: ignore[arg-type]


def oldest_age(oldest: object, now: float) -> float:
    """The age reported by ``stats`` for the oldest enqueue time found: 0.0 unless it is plausible."""
    when = plausible_time(oldest, now)
    return 0.0 if when is None else max(0.0, now - when)


def check_worker(worker: str) -> None:
    """A worker name becomes a Redis consumer name and a column value: non-empty and bounded."""
    if not isinstance(worker, str) or not worker or len(worker) > 200:
        raise ValueError(f"worker must be a name of 1 to 200 characters, not {worker!r}")


def raw_text(raw: bytes | str) -> str:
    """A payload as kept in a dead letter: text, undecodable bytes escaped, at most MAX_PAYLOAD_BYTES long."""
    if isinstance(raw, str):
        return raw[:MAX_PAYLOAD_BYTES]
    return raw[:MAX_PAYLOAD_BYTES].decode("utf-8", "backslashreplace")
