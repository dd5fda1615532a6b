"""A whole herald installation under test, as processes: ``herald workers`` (the supervisor and its worker
subprocesses) started the way ``herald up`` starts it, their heartbeats, and the mail an SMTP server took in.

Shared by the end-to-end tests (``tests/e2e``) and the chaos suite (``tests/chaos``): how workers are started
and found, how a process is frozen or killed while counting the mails it had in flight (the only mails that
may ever come twice), and the count of what arrived (by Message-ID at the server).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from herald.config import Settings
from herald.outbox import Delivery, DeliveryStatus
from herald.tracker.db import Database
from herald.tracker.models import WorkerHeartbeat, utcnow
from tests.support.smtp import SmtpServer
from tests.support.waiting import wait_until

__all__ = ["Tally", "WorkerProcesses", "clean_environment", "report"]


def report(tag: str, line: str) -> None:
    """Counts shown with ``pytest -s`` (and quoted in closing notes): ``[tag] line``."""
    print(f"\n[{tag}] {line}", flush=True)


def clean_environment() -> dict[str, str]:
    """This process's environment without any ``HERALD_*`` variable (the test sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}


@dataclass
class Tally:
    """Mail counted by Message-ID at the SMTP server: what arrived, what is missing, what came twice."""

    expected: int
    received: int
    unique: int

    @property
    def lost(self) -> int:
        return self.expected - self.unique

    @property
    def duplicated(self) -> int:
        return self.received - self.unique

    def line(self, name: str) -> str:
        counts = f"sent={self.unique} lost={self.lost} duplicated={self.duplicated}"
        return f"{name}: expected={self.expected} {counts}"


class WorkerProcesses:
    """Mixin for a test installation: the class provides the attributes below."""

    env: dict[str, str]
    settings: Settings
    db: Database
    smtp: SmtpServer
    tmp_path: Path
    supervisors: list[subprocess.Popen[bytes]]

    #: How long the waits of this installation may take before the test fails.
    deadline: float = 40.0

    # --- processes -----------------------------------------------------------------------------------

    def start_workers(self, **env: str) -> subprocess.Popen[bytes]:
        """``herald workers`` in a subprocess, as ``herald up`` starts it."""
        out = (self.tmp_path / f"supervisor-{len(self.supervisors)}.out").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "herald", "workers"],
            env={**clean_environment(), **self.env, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        self.supervisors.append(process)
        return process

    def stop_workers(self, process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=timeout)

    def stop_all_workers(self) -> None:
        """SIGTERM every supervisor still running (SIGKILL after 20 s): the teardown."""
        for process in self.supervisors:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def worker_pids(self) -> dict[str, int]:
        """Live workers by heartbeat name -> pid."""
        now = utcnow()
        with self.db.read() as s:
            rows = s.execute(
                select(WorkerHeartbeat.name, WorkerHeartbeat.pid, WorkerHeartbeat.expires_at).where(
                    WorkerHeartbeat.kind == "worker"
                )
            ).all()
        return {name: pid for name, pid, expires in rows if expires > now}

    def wait_workers(self, count: int, timeout: float | None = None) -> dict[str, int]:
        return wait_until(
            lambda: (p := self.worker_pids()) and len(p) == count and p,
            f"{count} live workers",
            timeout=timeout or self.deadline,
        )

    def log(self) -> str:
        path = self.settings.log_dir / "worker.log"
        return path.read_text() if path.exists() else ""

    # --- mails in flight -----------------------------------------------------------------------------

    def in_flight(self) -> int:
        """Mails the server accepted whose delivery the ledger does not record as sent (yet): what a process
        killed right now may have sent without recording it, the only mails a successor may send again."""
        return len(self.in_flight_pairs())

    def in_flight_pairs(self) -> set[tuple[int, str]]:
        """The (changeset id, address) of each mail counted by :meth:`in_flight`."""
        received = {(m.changeset_id, m.rcpt_tos[0]) for m in self.smtp.messages}
        with self.db.read() as s:
            sent = set(
                s.execute(
                    select(Delivery.changeset_id, Delivery.address).where(
                        Delivery.status == DeliveryStatus.SENT
                    )
                ).all()
            )
        return received - {(cs, a) for cs, a in sent}

    def freeze_counting(self, pid: int) -> tuple[set[tuple[int, str]], int]:
        """:meth:`freeze`, returning the mails in flight as (their pairs, how many were begun and not
        finished: those have no pair yet)."""
        os.kill(pid, signal.SIGSTOP)
        time.sleep(1.0)  # under CI load the server may take a while to read what was already sent
        return self.in_flight_pairs(), self.smtp.open_transactions

    def freeze(self, pid: int) -> int:
        """SIGSTOP ``pid``, let the server take in what it had already written, and return the mails in
        flight: accepted by the server and not recorded as sent, or begun and not finished. Taken before
        any successor can act (leases are seconds long, a frozen process is not seen as dead), so it
        bounds what may be sent twice."""
        # Accepted but not recorded, plus begun and not finished (a frozen sender completes those when it
        # wakes; a killed one never does): an upper bound on what may come twice.
        pairs, begun = self.freeze_counting(pid)
        return len(pairs) + begun

    def kill(self, pid: int) -> int:
        """Freeze ``pid`` (counting its mails in flight), then SIGKILL it; returns the count."""
        in_flight = self.freeze(pid)
        os.kill(pid, signal.SIGKILL)
        return in_flight

    def duplicates(self) -> dict[str, int]:
        ids = Counter(m.message_id for m in self.smtp.messages)
        return {k: v for k, v in ids.items() if v > 1}

    def dump_stacks(self) -> None:
        """On a timeout: every live worker prints its threads' stacks (faulthandler, SIGUSR1) into the
        supervisor's output, which is shown here, so a hang in CI says where it hangs."""
        for pid in self.worker_pids().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
        time.sleep(1.0)
        for path in sorted(self.tmp_path.glob("supervisor-*.out")):
            print(f"--- {path.name} (last 200 lines) ---")
            print("\n".join(path.read_text(errors="replace").splitlines()[-200:]))
