"""The whole system end to end: the HTTP app in-process, ``herald workers`` (the supervisor and its worker
subprocesses) as real processes, a real redis-server, aiosmtpd, and SQLite or PostgreSQL.

Randomness (which fields change, when a process is killed) comes from ``HERALD_TEST_SEED`` (a fixed
default, so CI runs are repeatable). Every wait is on an event: mail received, rows done, a heartbeat.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from herald.config import Settings, ensure_secrets, load_settings
from herald.outbox import Delivery, DeliveryStatus, Notification, NotificationState
from herald.tracker.db import Database
from herald.tracker.models import WorkerHeartbeat, utcnow
from herald.web import create_app
from tests.support.redis_server import RedisServer
from tests.support.smtp import SmtpServer
from tests.support.tracker import World, build_world, make_database
from tests.support.waiting import wait_until as _wait_until

SEED = int(os.environ.get("HERALD_TEST_SEED", "20261128"))
RECIPIENTS = ("bob@example.org", "carol@example.org", "dave@example.org")
DEADLINE = 40.0
wait_until = functools.partial(_wait_until, timeout=DEADLINE)


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
    """A process stopped by :meth:`Stack.freeze`, as it stood at the stop."""

    pid: int
    connections: frozenset[int]  # its open connections to the SMTP server (the server's numbers)
    recorded: frozenset[tuple[int, str]]  # (changeset, address) the ledger recorded as sent


@dataclass
class Stack:
    """One herald installation under test."""

    env: dict[str, str]
    settings: Settings
    db: Database
    world: World
    smtp: SmtpServer
    redis: RedisServer
    client: TestClient
    tmp_path: Path
    rng: random.Random
    supervisors: list[subprocess.Popen[bytes]] = field(default_factory=list)
    artifacts: list[int] = field(default_factory=list)
    changesets: list[int] = field(default_factory=list)

    # --- processes -----------------------------------------------------------------------------------

    def start_workers(self, **env: str) -> subprocess.Popen[bytes]:
        """``herald workers`` in a subprocess, as ``herald up`` starts it."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        out = (self.tmp_path / f"supervisor-{len(self.supervisors)}.out").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "herald", "workers"],
            env={**clean, **self.env, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        self.supervisors.append(process)
        return process

    def stop_workers(self, process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=timeout)

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

    def wait_workers(self, count: int) -> dict[str, int]:
        return wait_until(
            lambda: (p := self.worker_pids()) and len(p) == count and p, f"{count} live workers"
        )

    def log(self) -> str:
        path = self.settings.log_dir / "worker.log"
        return path.read_text() if path.exists() else ""

    # --- the HTTP API --------------------------------------------------------------------------------

    def headers(self, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.world.tokens[user]}"}

    def create(self) -> dict[str, Any]:
        r = self.client.post(
            f"/api/trackers/{self.world.bugs.id}/artifacts",
            json={
                "values": {
                    "title": f"Bug {len(self.artifacts) + 1}",
                    "assigned_to": "bob",
                    "cc": ["carol", "dave"],
                    "severity": self.rng.randint(1, 5),
                }
            },
            headers=self.headers(),
        )
        assert r.status_code == 201, r.text
        body = r.json()
        self.artifacts.append(body["artifact"]["id"])
        self.changesets.append(body["changeset_id"])
        return body

    def update(self, artifact_id: int | None = None) -> dict[str, Any]:
        artifact_id = artifact_id or self.rng.choice(self.artifacts)
        values = self.rng.choice(
            [
                {"status": self.rng.choice(["Open", "In progress", "Fixed", "Closed"])},
                {"severity": self.rng.randint(1, 5)},
                {"description": f"seen again ({self.rng.random():.6f})"},
            ]
        )
        r = self.client.patch(
            f"/api/artifacts/{artifact_id}",
            json={"values": values, "comment": f"update {len(self.changesets)}"},
            headers=self.headers(),
        )
        assert r.status_code == 200, r.text
        body = r.json()
        self.changesets.append(body["changeset_id"])
        return body

    def burst(self, creations: int = 10, updates: int = 30) -> None:
        """``creations + updates`` changesets, three recipients each."""
        for _ in range(creations):
            self.create()
        for _ in range(updates):
            self.update()

    # --- outcomes ------------------------------------------------------------------------------------

    def tally(self) -> Tally:
        ids = [str(m.message()["Message-ID"]) for m in self.smtp.messages]
        return Tally(expected=3 * len(self.changesets), received=len(ids), unique=len(set(ids)))

    def recorded(self) -> frozenset[tuple[int, str]]:
        """(changeset, address) of every delivery the ledger records as sent."""
        with self.db.read() as s:
            rows = s.execute(
                select(Delivery.changeset_id, Delivery.address).where(Delivery.status == DeliveryStatus.SENT)
            ).all()
        return frozenset((cs, address) for cs, address in rows)

    def freeze(self, pid: int) -> Frozen:
        """SIGSTOP ``pid`` and take stock at that instant: its open connections to the SMTP server and what
        the ledger records as sent. A stopped process records nothing more, so what it sent and had not
        recorded then is exactly what a successor may send again (see :meth:`in_flight`)."""
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: _stopped(pid), f"pid {pid} to stop")
        connections = self.smtp.connections_from(_client_ports(pid, self.smtp.port))
        return Frozen(pid, connections, self.recorded())

    def in_flight(self, frozen: Frozen) -> int:
        """The mails in flight when ``frozen`` was stopped: those the server accepted over its connections
        (before or after the stop: the server goes on reading what the process had already written) that
        the ledger had not recorded as sent at the stop, plus those begun on them (MAIL accepted, DATA not
        ended), which it completes if woken. The only mails a successor may send again.

        Counted over the stopped process's own connections, at the stop: a successor that takes its
        changesets over while it is stopped (its leases run out; they are seconds long) sends and records
        the same mails, which must not hide them; and the live workers' mails are not in flight."""
        received = {
            (int(m.message()["X-Herald-Changeset-ID"]), m.rcpt_tos[0])
            for m in self.smtp.messages
            if m.connection in frozen.connections
        }
        return len(received - frozen.recorded) + self.smtp.open_transactions_on(frozen.connections)

    def kill(self, pid: int) -> int:
        """Freeze ``pid``, SIGKILL it, and return its mails in flight (see :meth:`kill_frozen`)."""
        return self.kill_frozen(self.freeze(pid))

    def kill_frozen(self, frozen: Frozen) -> int:
        """SIGKILL a frozen process and return its mails in flight, counted once the server has seen its
        connections close: nothing more of it can arrive then, and what it had begun is gone with it."""
        os.kill(frozen.pid, signal.SIGKILL)
        self.smtp.wait_closed(frozen.connections, timeout=DEADLINE)
        return self.in_flight(frozen)

    def duplicates(self) -> dict[str, int]:
        ids = Counter(str(m.message()["Message-ID"]) for m in self.smtp.messages)
        return {k: v for k, v in ids.items() if v > 1}

    def states(self) -> dict[str, int]:
        with self.db.read() as s:
            return {
                str(state): n
                for state, n in s.execute(
                    select(Notification.state, func.count()).group_by(Notification.state)
                )
            }

    def all_done(self) -> bool:
        return self.states() == {NotificationState.DONE.value: len(self.changesets)}

    def wait_all_delivered(self, timeout: float = DEADLINE) -> Tally:
        expected = 3 * len(self.changesets)
        try:
            wait_until(lambda: self.tally().unique >= expected, f"{expected} distinct mails", timeout=timeout)
            wait_until(self.all_done, "every notification done", timeout=timeout)
        except BaseException:
            self.dump_stacks()
            raise
        return self.tally()

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


def stack_env(
    tmp_path: Path, database_url: str, smtp: SmtpServer, redis: RedisServer, namespace: str
) -> dict[str, str]:
    return {
        "HERALD_DATA_DIR": str(tmp_path / "var"),
        "HERALD_DATABASE_URL": database_url,
        "HERALD_QUEUE_BACKEND": "redis",
        "HERALD_REDIS_URL": redis.url,
        "HERALD_REDIS_NAMESPACE": namespace,
        "HERALD_SMTP_HOST": smtp.host,
        "HERALD_SMTP_PORT": str(smtp.port),
        "HERALD_SMTP_TIMEOUT": "5",
        "HERALD_ASYNC_EMAILS": "all",
        "HERALD_NB_BACKEND_WORKERS": "2",
        "HERALD_LEASE_SECONDS": "2",
        "HERALD_RETRY_BASE_SECONDS": "0.05",
        "HERALD_RETRY_MAX_SECONDS": "0.5",
        "HERALD_WORKER_GRACE_SECONDS": "5",
        "HERALD_LOG_DIR": str(tmp_path / "log"),
    }


@pytest.fixture
def make_stack(
    tmp_path: Path, smtp_server: SmtpServer, redis_server: RedisServer, redis_namespace: str
) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(database_url: str | None = None, **env: str) -> Stack:
        url = database_url or f"sqlite:///{tmp_path / 'herald.db'}"
        values = {**stack_env(tmp_path, url, smtp_server, redis_server, redis_namespace), **env}
        settings = ensure_secrets(load_settings(env=values))
        db = make_database(settings.database_url)
        world = build_world(db)
        client = TestClient(create_app(settings), raise_server_exceptions=True)
        client.__enter__()
        stack = Stack(
            values, settings, db, world, smtp_server, redis_server, client, tmp_path, random.Random(SEED)
        )
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        for process in stack.supervisors:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        stack.client.__exit__(None, None, None)
        stack.db.dispose()


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    """SQLite, Redis, 2 workers, async for every project."""
    return make_stack()
