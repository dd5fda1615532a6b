"""The queue contract: the job, its wire format, and what every backend promises.

A job carries ids only (the changeset to notify about), never content: the worker reads the rest from the
tracker, with the recipient's permissions. On the wire a job is a small JSON object with a schema version::

    {"v": 1, "id": "<uuid4 hex>", "changeset_id": 42, "enqueued_at": 1700000000.5}

It is never pickled: a queue is shared state, and unpickling what someone else wrote runs their code.
"""

from __future__ import annotations

import abc
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from herald.queue.errors import MalformedJob

__all__ = ["MAX_PAYLOAD_BYTES", "SCHEMA_VERSION", "DeadLetter", "Job", "Queue", "QueueStats", "decode_job"]

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_ID = 2**63 - 1  # ids live in BIGINT columns
_FIELDS = frozenset({"v", "id", "changeset_id", "enqueued_at"})
_JOB_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Job:
    """One unit of work: notify everyone concerned by changeset ``changeset_id``.

    ``attempts`` and ``receipt`` are not part of the payload: the queue sets them when a worker claims the
    job (``attempts`` counts every claim so far, this one included; ``receipt`` names this delivery in the
    backend, a stream entry id or a row id, and is what ``ack``/``retry``/``dead``/``extend`` act on).
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
    if type(enqueued_at) not in (int, float) or not math.isfinite(enqueued_at) or enqueued_at < 0:  # type: ignore[arg-type]
        return f"enqueued_at must be a finite unix time >= 0, not {_short(enqueued_at)}"
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
      another worker once the lease runs out. ``extend`` renews it while a long job runs.
    - Every claim counts an attempt; a claim that would exceed ``settings.job_max_attempts`` dead-letters
      the job ("too many attempts") instead of returning it, so a poison job cannot loop.
    - A malformed payload met while claiming is dead-lettered with its reason and the claim goes on.
    - ``ack``, ``retry`` and ``dead`` on a job whose lease was lost to another worker change nothing.
    - Enqueueing a job whose id the queue already holds (in any state, dead included) changes nothing.
    - Failures to reach the server raise :class:`~herald.queue.errors.QueueUnavailable`.

    An instance is safe to share between threads.
    """

    @abc.abstractmethod
    def enqueue(self, job: Job) -> None:
        """Add ``job``; it is ready at once."""

    @abc.abstractmethod
    def claim(self, worker: str, timeout: float) -> Job | None:
        """Take the next ready job for ``worker``, waiting up to ``timeout`` seconds for one.

        Returns as soon as a job is pushed (no polling interval, except SQLite: see the SQL backend).
        ``timeout=0`` does not wait. Returns None when nothing came in time.
        """

    @abc.abstractmethod
    def ack(self, job: Job) -> None:
        """The job is done: forget it."""

    @abc.abstractmethod
    def retry(self, job: Job, delay: float, reason: str) -> None:
        """Give the job back, to be delivered again after ``delay`` seconds; no worker waits for it."""

    @abc.abstractmethod
    def dead(self, job: Job, reason: str) -> None:
        """Give up on the job: move it to the dead letters with ``reason``."""

    @abc.abstractmethod
    def extend(self, job: Job) -> None:
        """Renew the job's lease for another ``lease_seconds``; raise LeaseLost if it is already gone."""

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
    def purge_dead(self) -> int:
        """Delete every dead letter; return how many."""

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


def check_worker(worker: str) -> None:
    """A worker name becomes a Redis consumer name and a column value: non-empty and bounded."""
    if not isinstance(worker, str) or not worker or len(worker) > 200:
        raise ValueError(f"worker must be a name of 1 to 200 characters, not {worker!r}")


def raw_text(raw: bytes | str) -> str:
    """A payload as kept in a dead letter: text, undecodable bytes escaped, at most MAX_PAYLOAD_BYTES long."""
    if isinstance(raw, str):
        return raw[:MAX_PAYLOAD_BYTES]
    return raw[:MAX_PAYLOAD_BYTES].decode("utf-8", "backslashreplace")
