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

__all__ = ["Frozen", "Tally", "WorkerProcesses", "clean_environment", "report"]


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


@dataclass(frozen=True)
class Frozen:
    """A process stopped by :meth:`WorkerProcesses.freeze`, as it stood at the stop."""

    pid: int
    connections: frozenset[int]  # its open connections to the SMTP server (the server's numbers)
    recorded: frozenset[tuple[int, str]]  # (changeset, address) the ledger recorded as sent


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
    #
    # A mail may come twice only if the process that sent it was stopped or killed before it recorded it.
    # So the count is taken at the stop, over the stopped process's own SMTP connections: a successor that
    # takes its changesets over while it is stopped (leases are seconds long) re-sends and records the same
    # mails, which must not hide them, and the live workers' mails are not in flight.

    def recorded(self) -> frozenset[tuple[int, str]]:
        """(changeset, address) of every delivery the ledger records as sent."""
        with self.db.read() as s:
            rows = s.execute(
                select(Delivery.changeset_id, Delivery.address).where(Delivery.status == DeliveryStatus.SENT)
            ).all()
        return frozenset((cs, address) for cs, address in rows)

    def in_flight(self, frozen: Frozen | None = None) -> int:
        """The mails in flight of the process ``frozen`` describes: accepted by the server over its
        connections (before or after the stop: the server goes on reading what it had written) and not
        recorded as sent at the stop, plus those begun on them (MAIL accepted, DATA not ended), which it
        completes if woken. Without ``frozen``: every accepted mail the ledger does not record (yet), over
        all connections, which bounds what a fault right now may have cost."""
        if frozen is None:
            return len(self.in_flight_pairs())
        return len(self.in_flight_pairs(frozen)) + self.smtp.open_transactions_on(frozen.connections)

    def in_flight_pairs(self, frozen: Frozen | None = None) -> set[tuple[int, str]]:
        """The (changeset id, address) of each accepted mail counted by :meth:`in_flight`."""
        if frozen is None:
            return {(m.changeset_id, m.rcpt_tos[0]) for m in self.smtp.messages} - self.recorded()
        received = {
            (m.changeset_id, m.rcpt_tos[0]) for m in self.smtp.messages if m.connection in frozen.connections
        }
        return received - frozen.recorded

    def freeze(self, pid: int) -> Frozen:
        """SIGSTOP ``pid`` and take stock at that instant: its open connections to the SMTP server and what
        the ledger records as sent. A stopped process records nothing more, so what it sent and had not
        recorded then is exactly what a successor may send again."""
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: _stopped(pid), f"pid {pid} to stop")
        connections = self.smtp.connections_from(_client_ports(pid, self.smtp.port))
        return Frozen(pid, connections, self.recorded())

    def freeze_counting(self, pid: int) -> tuple[set[tuple[int, str]], int]:
        """:meth:`freeze`, returning the mails in flight at the stop as (their pairs, how many were begun
        and not finished: those have no pair yet)."""
        frozen = self.freeze(pid)
        return self.in_flight_pairs(frozen), self.smtp.open_transactions_on(frozen.connections)

    def kill(self, pid: int) -> int:
        """Freeze ``pid``, SIGKILL it, and return its mails in flight (see :meth:`kill_frozen`)."""
        return self.kill_frozen(self.freeze(pid))

    def kill_frozen(self, frozen: Frozen) -> int:
        """SIGKILL a frozen process and return its mails in flight, counted once the server has seen its
        connections close: nothing more of it can arrive then, and what it had begun is gone with it."""
        os.kill(frozen.pid, signal.SIGKILL)
        self.smtp.wait_closed(frozen.connections, timeout=self.deadline)
        return self.in_flight(frozen)

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


def _stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP has taken effect): state ``T`` in ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


def _client_ports(pid: int, server_port: int) -> set[int]:
    """The local ports of ``pid``'s TCP connections to ``server_port`` on 127.0.0.1 (from ``/proc``: the
    socket inodes among its file descriptors, matched in the kernel's connection table)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    remote = f"0100007F:{server_port:04X}"  # 127.0.0.1, as the kernel writes it (little-endian)
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == remote and fields[9] in inodes:
            ports.add(int(fields[1].split(":")[1], 16))
    return ports
