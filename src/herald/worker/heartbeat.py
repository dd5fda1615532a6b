"""Heartbeats: each worker and the supervisor refresh a row in ``worker_heartbeats`` every few seconds.

The row's ``expires_at`` is its TTL: ``herald check`` (which may read the tracker database but not import
the worker) counts live workers as rows not yet expired, and reports the rest as dead or hung. A process
that exits cleanly deletes its row.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete

from herald.tracker.db import Database
from herald.tracker.models import WorkerHeartbeat, utcnow

__all__ = [
    "HEARTBEAT_SECONDS",
    "HEARTBEAT_TTL_SECONDS",
    "Heartbeat",
    "forget",
    "process_name",
]

log = logging.getLogger("herald.worker")

#: How often a process beats.
HEARTBEAT_SECONDS = 2.0
#: How long a beat vouches for the process: three missed beats and it counts as gone.
HEARTBEAT_TTL_SECONDS = 3 * HEARTBEAT_SECONDS


def process_name(role: str, host: str | None = None) -> str:
    """``<host>:<role>``: the name a process uses in its heartbeat (and a worker as its queue consumer),
    unique across the machines that share one database and queue. ``host`` is the ``node_name`` setting
    (the hostname unless set: containers that share a hostname must each set their own)."""
    return f"{host or socket.gethostname()}:{role}"[-64:]


class Heartbeat:
    """Beats for one process from a background thread; ``info()`` supplies what to publish."""

    def __init__(
        self,
        db: Database,
        name: str,
        kind: str,
        info: Callable[[], dict[str, Any]],
        *,
        interval: float = HEARTBEAT_SECONDS,
        ttl: float = HEARTBEAT_TTL_SECONDS,
        host: str | None = None,
    ) -> None:
        self.db = db
        self.host = (host or socket.gethostname())[:255]
        self.name = name
        self.kind = kind
        self._info = info
        self._interval = interval
        self._ttl = ttl
        self._started_at = utcnow()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.beat()

    def poke(self) -> None:
        """Beat now rather than at the next interval (what the process does changed in a way that
        matters: an idle worker took a job). Returns at once; the beat happens on the heartbeat thread."""
        self._wake.set()

    def beat(self) -> None:
        """Write the row now. Errors are logged once per outage, never raised."""
        now = utcnow()
        try:
            with self.db.session() as session:
                session.merge(
                    WorkerHeartbeat(
                        name=self.name,
                        kind=self.kind,
                        pid=os.getpid(),
                        host=self.host,
                        started_at=self._started_at,
                        beat_at=now,
                        expires_at=now + timedelta(seconds=self._ttl),
                        info=self._info(),
                    )
                )
        except Exception as exc:
            if not self._failing:
                log.warning("heartbeat of %s could not be written: %s", self.name, exc)
            self._failing = True
            return
        if self._failing:
            log.info("heartbeat of %s written again", self.name)
        self._failing = False

    def stop(self, *, forget_row: bool = True) -> None:
        """Stop beating; delete the row (a clean exit is not a death)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if forget_row:
            try:
                forget(self.db, [self.name])
            except Exception as exc:
                log.warning("heartbeat of %s could not be removed: %s", self.name, exc)


def forget(db: Database, names: Iterable[str]) -> None:
    """Delete the heartbeat rows of ``names`` (processes that will not come back)."""
    names = list(names)
    if not names:
        return
    with db.session() as session:
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name.in_(names)))
