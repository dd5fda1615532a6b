"""Delivery statistics: totals that only grow, kept in the database and summed over every process.

Why the database, rather than prometheus_client's multiprocess mode: herald's workers are many processes
on one or many hosts that already share the tracker database; a multiprocess registry sums only the
processes of one host (a second host needs its own scrape endpoint, and a web front end on a third sees
none), needs ``PROMETHEUS_MULTIPROC_DIR`` in the environment before prometheus_client is imported, and
leaves a file per dead pid to clean. Here each process adds its increments in memory (:class:`Counts`,
lock-protected, nanoseconds per event) and writes them as *deltas* about once a second
(:func:`add`: ``value = value + delta``, atomic on SQLite and PostgreSQL). So

- one scrape of any web process reads the whole installation's totals (:func:`read`), summed exactly once
  whatever the number of writers: each increment is written by the process that counted it, once;
- a process that dies leaves nothing to clean: what it wrote stays in the totals; a SIGKILL loses at most
  its last second of increments (a flush that fails keeps them for the next one);
- the totals survive restarts, so Prometheus sees no counter reset when a worker is restarted.

The catalogue of series (names, label values, histogram buckets) is here, so that writers (the workers'
hooks) and the reader (:mod:`herald.ops.metrics`) agree.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from herald.outbox.tables import DeliveryCounter
from herald.tracker.db import Database

__all__ = [
    "ATTEMPTS",
    "JOBS",
    "JOB_DURATION",
    "LATENCY",
    "Counts",
    "Histogram",
    "SeriesKey",
    "StatsWriter",
    "add",
    "labels_text",
    "parse_labels",
    "read",
    "smtp_class",
]

log = logging.getLogger("herald.metrics")

T = DeliveryCounter.__table__
C = T.c

#: ``(metric, labels)``; ``labels`` as :func:`labels_text` spells them.
SeriesKey = tuple[str, str]


@dataclass(frozen=True)
class Histogram:
    """A histogram kept as one counter per bucket (not cumulative: each observation adds to one bucket
    only, so writers never read-modify-write), plus ``<name>_sum``. The reader cumulates."""

    name: str
    buckets: tuple[float, ...]  # upper bounds, ascending; +Inf is implied

    @property
    def bucket_metric(self) -> str:
        return f"{self.name}_bucket"

    @property
    def sum_metric(self) -> str:
        return f"{self.name}_sum"

    def bucket_of(self, value: float) -> str:
        for bound in self.buckets:
            if value <= bound:
                return _le(bound)
        return "+Inf"


def _le(bound: float) -> str:
    return repr(float(bound))


#: Each attempt to deliver one message to one recipient: ``outcome`` is ``sent``, ``retrying`` (a
#: transient failure for that recipient), ``failed`` (5xx, an address that must not go out, or given up
#: after ``delivery_max_age``) or ``held`` (a relay-level failure: nobody charged); ``smtp_class`` is
#: ``2xx``/``4xx``/``5xx`` from the reply code, ``connection`` when there was no reply (refused, reset,
#: timeout, TLS), ``none`` when nothing was sent (a malformed address).
ATTEMPTS = "herald_delivery_attempts"
#: Jobs settled by workers: ``done`` (acked), ``retry`` (due again later), ``busy`` (another process held
#: the changeset), ``dead`` (dead-lettered by the worker).
JOBS = "herald_jobs"
#: From the change's commit (the outbox row) to the relay's 2xx, per recipient sent.
LATENCY = Histogram(
    "herald_delivery_latency_seconds",
    (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600),
)
#: A worker's whole handling of one job: claim to settle.
JOB_DURATION = Histogram(
    "herald_job_duration_seconds", (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
)

ATTEMPT_OUTCOMES = ("sent", "retrying", "failed", "held")
SMTP_CLASSES = ("2xx", "4xx", "5xx", "connection", "none")
JOB_OUTCOMES = ("done", "retry", "busy", "dead")


def smtp_class(code: int | None) -> str:
    """``2xx``, ``4xx``, ``5xx`` for a reply code, ``connection`` when there was none."""
    if code is None or not 200 <= code <= 599:
        return "connection"
    return f"{code // 100}xx"


def labels_text(labels: Mapping[str, str]) -> str:
    """``{"b": "2", "a": "1"}`` -> ``a=1,b=2`` (label values here are from fixed vocabularies)."""
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def parse_labels(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",")) if text else {}


class Counts:
    """Increments gathered in one process, waiting to be written with :func:`add`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deltas: dict[SeriesKey, float] = {}

    def inc(self, metric: str, labels: Mapping[str, str] | None = None, amount: float = 1.0) -> None:
        key = (metric, labels_text(labels or {}))
        with self._lock:
            self._deltas[key] = self._deltas.get(key, 0.0) + amount

    def observe(self, histogram: Histogram, values: Iterable[float]) -> None:
        values = list(values)
        if not values:
            return
        with self._lock:
            for value in values:
                key = (histogram.bucket_metric, f"le={histogram.bucket_of(value)}")
                self._deltas[key] = self._deltas.get(key, 0.0) + 1
            key = (histogram.sum_metric, "")
            self._deltas[key] = self._deltas.get(key, 0.0) + sum(values)

    def take(self) -> dict[SeriesKey, float]:
        """Everything counted since the last take (the caller writes it, or gives it back)."""
        with self._lock:
            deltas, self._deltas = self._deltas, {}
        return deltas

    def give_back(self, deltas: Mapping[SeriesKey, float]) -> None:
        """A write failed: keep these increments for the next one."""
        with self._lock:
            for key, amount in deltas.items():
                self._deltas[key] = self._deltas.get(key, 0.0) + amount


def _upserts() -> dict[str, Any]:
    values = {"metric": bindparam("m"), "labels": bindparam("l"), "value": bindparam("v")}
    statements: dict[str, Any] = {}
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite)):
        stmt = dialect.insert(T).values(values)
        statements[name] = stmt.on_conflict_do_update(
            index_elements=[C.metric, C.labels], set_={"value": C.value + stmt.excluded.value}
        )
    return statements


_UPSERT = _upserts()
_READ = select(C.metric, C.labels, C.value)


def add(conn: Connection, deltas: Mapping[SeriesKey, float]) -> None:
    """Add ``deltas`` to the totals, in the caller's transaction (one statement, executemany)."""
    rows = [{"m": m, "l": labels, "v": v} for (m, labels), v in deltas.items() if v]
    if rows:
        conn.execute(_UPSERT[conn.dialect.name], rows)


def read(conn: Connection) -> dict[SeriesKey, float]:
    """Every total, by series."""
    return {(m, labels): float(v) for m, labels, v in conn.execute(_READ)}


#: How often a process writes what it counted (and so how far behind a scrape can be).
FLUSH_SECONDS = 1.0


class StatsWriter:
    """A process's :class:`Counts` and the background thread that adds them to the database totals every
    ``interval`` seconds; :meth:`stop` writes what is left. A write that fails keeps its increments for the
    next one (logged once per outage): the metrics never stop a delivery."""

    def __init__(self, db: Database, *, interval: float = FLUSH_SECONDS) -> None:
        self.db = db
        self.counts = Counts()
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metrics-flush", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def flush(self) -> None:
        """Write what was counted since the last flush; on failure keep it for the next one."""
        deltas = self.counts.take()
        if not deltas:
            return
        try:
            with self.db.write() as conn:
                add(conn, deltas)
        except Exception as exc:
            self.counts.give_back(deltas)
            if not self._failing:
                log.warning("metrics could not be written (kept for the next try): %s", exc)
            self._failing = True
            return
        if self._failing:
            log.info("metrics written again")
        self._failing = False
