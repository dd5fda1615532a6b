"""The chaos suite's installation, all real processes: `herald serve` (the front end, over real HTTP),
`herald workers` (the supervisor and its workers), a redis-server of the test's own (password, AOF), an
aiosmtpd relay that is slow, flaky and refuses some recipients, and SQLite or PostgreSQL.

:class:`Load` drives changes through the HTTP API from a few client threads at a steady rate;
:class:`Faults` hits the installation at seeded moments meanwhile; :func:`reconcile` compares, at the end,
every (changeset, recipient) the tracker says is owed with the ledger and with what the relay received.
"""

from __future__ import annotations

import itertools
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import func, select

from herald.config import Settings, load_settings
from herald.outbox import Notification, NotificationState
from herald.tracker.db import Database
from herald.tracker.models import Changeset, User
from herald.tracker.users import create_user
from tests.chaos import profile as P
from tests.support.redis_server import RedisServer
from tests.support.services import free_port
from tests.support.smtp import SmtpServer
from tests.support.system import WorkerProcesses, clean_environment
from tests.support.tracker import World, build_world, make_database
from tests.support.waiting import wait_until

#: Users a change may notify (assigned or cc). Mail to the ``bounce*`` ones is refused with a 550.
NOTIFIED = ("bob", "carol", "dave", "eve", "fay", "gus", "hal", "ivy", "bounce1", "bounce2")
REFUSED_REPLY = "550 5.1.1 <{address}>: no such user"
FRONTEND_START_SECONDS = 60.0


def email(username: str) -> str:
    return f"{username}@example.org"


# --- the front end -----------------------------------------------------------------------------------


class Frontend:
    """`herald serve` as a subprocess on a fixed free port (so a restart comes back where it was)."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.up = threading.Event()  # set while the front end answers; clients wait on it

    def start(self) -> None:
        out = (self.tmp_path / f"frontend-{self.starts}.out").open("wb")
        self.starts += 1
        self.process = subprocess.Popen(
            [sys.executable, "-m", "herald", "serve", "--port", str(self.port)],
            env={**clean_environment(), **self.env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        wait_until(self._healthy, "herald serve to answer /healthz", timeout=FRONTEND_START_SECONDS)
        self.up.set()

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"herald serve exited with {self.process.returncode}; see {self.tmp_path}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        self.up.clear()
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        self.up.clear()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- the installation --------------------------------------------------------------------------------


@dataclass
class ChaosStack(WorkerProcesses):
    env: dict[str, str]
    settings: Settings
    db: Database
    world: World
    smtp: SmtpServer
    redis: RedisServer | None
    frontend: Frontend
    tmp_path: Path
    admin_token: str
    users: dict[int, str]  # user id -> address
    supervisors: list[subprocess.Popen[bytes]] = field(default_factory=list)
    deadline: float = 60.0

    @property
    def queue_backend(self) -> str:
        return self.settings.queue_backend

    @property
    def database(self) -> str:
        return self.db.engine.dialect.name

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def notification_states(self) -> dict[str, int]:
        with self.db.read() as s:
            return {
                str(state): n
                for state, n in s.execute(
                    select(Notification.state, func.count()).group_by(Notification.state)
                )
            }

    def changesets(self) -> list[tuple[int, int]]:
        """Every committed changeset: (id, artifact id)."""
        with self.db.read() as s:
            rows = s.execute(select(Changeset.id, Changeset.artifact_id).order_by(Changeset.id))
            return [(cs, a) for cs, a in rows]

    def settled(self) -> bool:
        """Every committed changeset has its notification, and every notification is done."""
        with self.db.read() as s:
            changesets = s.scalar(select(func.count()).select_from(Changeset))
        return self.notification_states() == {NotificationState.DONE.value: changesets}

    def live_workers(self) -> dict[str, int]:
        """Workers with a fresh heartbeat whose process exists (a killed one's row may outlive it)."""
        live = {}
        for name, pid in self.worker_pids().items():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            live[name] = pid
        return live


def chaos_env(
    tmp_path: Path, database_url: str, smtp: SmtpServer, redis: RedisServer | None, admin_token: str
) -> dict[str, str]:
    env = {
        "HERALD_DATA_DIR": str(tmp_path / "var"),
        "HERALD_LOG_DIR": str(tmp_path / "log"),
        "HERALD_DATABASE_URL": database_url,
        "HERALD_ADMIN_TOKEN": admin_token,
        "HERALD_SECRET_KEY": secrets.token_hex(24),
        "HERALD_SMTP_HOST": smtp.host,
        "HERALD_SMTP_PORT": str(smtp.port),
        "HERALD_SMTP_TIMEOUT": "5",
        "HERALD_ASYNC_EMAILS": "all",
        "HERALD_NB_BACKEND_WORKERS": "2",
        "HERALD_LEASE_SECONDS": "2",
        "HERALD_RETRY_BASE_SECONDS": "0.05",
        "HERALD_RETRY_MAX_SECONDS": "0.5",
        "HERALD_WORKER_GRACE_SECONDS": "5",
    }
    if redis is not None:
        env.update(HERALD_QUEUE_BACKEND="redis", HERALD_REDIS_URL=redis.url, HERALD_REDIS_NAMESPACE="chaos")
    else:
        env["HERALD_QUEUE_BACKEND"] = "sql"
    return env


@pytest.fixture
def make_chaos_stack(tmp_path: Path, smtp_server: SmtpServer, request: pytest.FixtureRequest):
    """``make_chaos_stack(database="sqlite"|"postgresql", queue="redis"|"sql")``: the installation, with
    the front end up and the workers not yet started. Everything is stopped after the test."""
    stacks: list[ChaosStack] = []

    def make(database: str, queue: str) -> ChaosStack:
        sqlite = f"sqlite:///{tmp_path / 'herald.db'}"
        url = request.getfixturevalue("pg_url") if database == "postgresql" else sqlite
        redis = request.getfixturevalue("own_redis_server") if queue == "redis" else None
        admin_token = secrets.token_hex(24)
        env = chaos_env(tmp_path, url, smtp_server, redis, admin_token)
        settings = load_settings(env=env)
        db = make_database(settings.database_url)
        world = build_world(db)
        with db.session() as s:
            for name in NOTIFIED:
                if name not in world.users:
                    create_user(s, username=name, email=email(name), real_name=name.capitalize())
        with db.read() as s:
            users = {uid: address for uid, address in s.execute(select(User.id, User.email))}
        for name in NOTIFIED:
            if name.startswith("bounce"):
                smtp_server.refuse_recipient(email(name), REFUSED_REPLY)
        frontend = Frontend(env, tmp_path)
        stack = ChaosStack(
            env, settings, db, world, smtp_server, redis, frontend, tmp_path, admin_token, users
        )
        stacks.append(stack)
        frontend.start()
        return stack

    yield make
    for stack in stacks:
        stack.frontend.stop()
        stack.stop_all_workers()
        stack.db.dispose()


# --- the load ----------------------------------------------------------------------------------------


@dataclass
class Load:
    """Changes through the HTTP API: ``clients`` threads, ``rate`` changes per second in all, a quarter
    of them creations (each notifies an assignee and one to three people in cc), the rest updates.

    A request the front end never answered (it was killed) is counted as interrupted, not retried: whether
    it committed is for the reconciliation to find out, from the database."""

    stack: ChaosStack
    profile: P.Profile
    seed: int
    created: list[int] = field(default_factory=list)  # artifact ids acknowledged
    acknowledged: list[int] = field(default_factory=list)  # changeset ids acknowledged
    interrupted: int = 0
    busy: int = 0  # requests under way right now
    refused: list[str] = field(default_factory=list)  # any other answer: a bug
    started: float = 0.0
    finished: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _numbers: Iterator[int] = field(default_factory=itertools.count)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.started = time.monotonic()
        for n in range(self.profile.clients):
            thread = threading.Thread(target=self._client, args=(n,), name=f"chaos-client-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
            assert not thread.is_alive(), "the load did not finish"
        self.finished = time.monotonic()

    @property
    def done(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    def _next(self) -> int | None:
        with self._lock:
            number = next(self._numbers)
        return number if number < self.profile.changes else None

    def _client(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        token = self.stack.world.tokens["alice"]
        with httpx.Client(
            base_url=self.stack.frontend.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            while (number := self._next()) is not None:
                due = self.started + number / self.profile.rate
                if (pause := due - time.monotonic()) > 0:
                    time.sleep(pause)  # pacing the load, not waiting for an outcome
                self.stack.frontend.up.wait(FRONTEND_START_SECONDS)
                with self._lock:
                    self.busy += 1
                try:
                    self._change(client, rng, number)
                except httpx.TransportError:
                    with self._lock:
                        self.interrupted += 1
                finally:
                    with self._lock:
                        self.busy -= 1

    def _change(self, client: httpx.Client, rng: random.Random, number: int) -> None:
        with self._lock:
            known = list(self.created)
        if len(known) < 3 or rng.random() < 0.25:
            assignee = rng.choice(NOTIFIED)
            cc = rng.sample([u for u in NOTIFIED if u != assignee], rng.randint(1, 3))
            r = client.post(
                f"/api/trackers/{self.stack.world.bugs.id}/artifacts",
                json={
                    "values": {
                        "title": f"Chaos {number}",
                        "assigned_to": assignee,
                        "cc": cc,
                        "severity": rng.randint(1, 5),
                    }
                },
            )
            if r.status_code == 201:
                body = r.json()
                with self._lock:
                    self.created.append(body["artifact"]["id"])
                    self.acknowledged.append(body["changeset_id"])
                return
        else:
            values: dict[str, Any] = {"description": f"change {number} ({rng.random():.9f})"}
            if rng.random() < 0.3:
                values["status"] = rng.choice(["Open", "In progress", "Fixed", "Closed"])
            r = client.patch(
                f"/api/artifacts/{rng.choice(known)}", json={"values": values, "comment": f"update {number}"}
            )
            if r.status_code == 200:
                with self._lock:
                    self.acknowledged.append(r.json()["changeset_id"])
                return
        with self._lock:
            self.refused.append(f"{r.request.method} {r.request.url.path} -> {r.status_code} {r.text[:300]}")


# --- the faults --------------------------------------------------------------------------------------


@dataclass
class Faults:
    """Faults at seeded moments of the load, one at a time, each counted by kind. ``in_flight`` adds up
    the mails in flight when a process or the relay was hit: the most that may be sent twice."""

    stack: ChaosStack
    profile: P.Profile
    seed: int
    injected: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    log: list[str] = field(default_factory=list)
    finished: float = 0.0
    load: Load | None = None

    def plan(self) -> list[tuple[float, str]]:
        """(seconds after the load started, kind), in time order: spread over the load's first 90 %."""
        rng = random.Random(self.seed)
        counts = self.profile.fault_counts(self.stack.queue_backend)
        kinds = [kind for kind, n in sorted(counts.items()) for _ in range(n)]
        rng.shuffle(kinds)
        duration = self.profile.changes / self.profile.rate
        slots = len(kinds)
        return [(duration * (0.05 + 0.85 * (i + rng.random()) / slots), kind) for i, kind in enumerate(kinds)]

    def run(self, load: Load) -> None:
        self.load = load
        rng = random.Random(self.seed + 1)
        for at, kind in self.plan():
            if (pause := load.started + at - time.monotonic()) > 0:
                time.sleep(pause)  # the moment of the fault, drawn from the seed
            began = time.monotonic()
            detail = getattr(self, kind)(rng)
            self.injected[kind] += 1
            line = f"t={began - load.started:6.1f}s {kind} {detail} ({time.monotonic() - began:.1f}s)"
            self.log.append(line)
            print(f"[chaos] {line}", flush=True)
        self.finished = time.monotonic()

    # --- one method per kind -------------------------------------------------------------------------

    def _victim(self, rng: random.Random) -> tuple[str, int]:
        live = wait_until(
            lambda: (w := self.stack.live_workers()) and len(w) >= 1 and w, "a live worker", timeout=60
        )
        name = rng.choice(sorted(live))
        return name, live[name]

    def _workers_back(self, victim: int) -> None:
        wanted = int(self.stack.env["HERALD_NB_BACKEND_WORKERS"])
        wait_until(
            lambda: len(w := self.stack.live_workers()) == wanted and victim not in w.values(),
            "the supervisor to replace the worker",
            timeout=60,
        )

    def worker_sigkill(self, rng: random.Random) -> str:
        name, pid = self._victim(rng)
        in_flight = self.stack.kill(pid)
        self.in_flight += in_flight
        self._workers_back(pid)
        return f"{name} pid {pid}, {in_flight} in flight"

    def worker_sigstop(self, rng: random.Random) -> str:
        name, pid = self._victim(rng)
        in_flight = self.stack.freeze(pid)
        self.in_flight += in_flight
        frozen = 2 * self.stack.settings.lease_seconds + rng.uniform(0.5, 2.0)
        try:
            time.sleep(frozen)  # how long the fault lasts: past the lease, so the others take over
        finally:
            os.kill(pid, signal.SIGCONT)
        lease = self.stack.settings.lease_seconds
        return f"{name} pid {pid} frozen {frozen + 1:.1f}s (lease {lease:g}s), {in_flight} in flight"

    def _redis_crash(self, rng: random.Random, *, fresh: bool) -> str:
        assert self.stack.redis is not None
        down = rng.uniform(*self.profile.redis_down_seconds)
        self.stack.redis.kill()
        time.sleep(down)  # how long the fault lasts
        self.stack.redis.start(fresh=fresh)
        return f"down {down:.1f}s" + (", back empty" if fresh else ", back from its AOF")

    def redis_sigkill_aof(self, rng: random.Random) -> str:
        return self._redis_crash(rng, fresh=False)

    def redis_sigkill_empty(self, rng: random.Random) -> str:
        return self._redis_crash(rng, fresh=True)

    def relay_down(self, rng: random.Random) -> str:
        in_flight = self.stack.in_flight() + self.stack.smtp.open_transactions
        self.in_flight += in_flight
        down = rng.uniform(*self.profile.relay_down_seconds)
        self.stack.smtp.go_down()
        try:
            time.sleep(down)  # how long the outage lasts
        finally:
            self.stack.smtp.come_back()
        return f"down {down:.1f}s, {in_flight} in flight"

    def frontend_sigkill(self, rng: random.Random) -> str:
        # Aim at a request under way (committed and not yet answered, with luck): wait a little for one.
        assert self.load is not None
        aim = time.monotonic() + 2.0
        while self.load.busy == 0 and not self.load.done and time.monotonic() < aim:
            time.sleep(0.001)
        self.stack.frontend.kill()
        killed = time.monotonic()
        self.stack.frontend.start()
        return f"restarted, answering again after {time.monotonic() - killed:.1f}s"


# --- the reconciliation ------------------------------------------------------------------------------


@dataclass
class Outcome:
    changesets: int
    creations: int
    expected: int  # (changeset, recipient) pairs owed, the refused ones included
    delivered: int
    lost: int
    duplicated: int
    failed_as_expected: int  # refused with a 550 and recorded failed with that reply
    unexpected: list[str]  # mail for a pair nobody owed
    ledger_mismatches: list[str]  # the ledger disagrees with the tracker, or a refusal not recorded
    lost_pairs: list[tuple[int, str]]


def reconcile(stack: ChaosStack, acknowledged: list[int]) -> Outcome:
    """Every (changeset, recipient) the tracker says is owed, against the ledger (through the notification
    API) and against what the relay received."""
    committed = stack.changesets()
    missing = sorted(set(acknowledged) - {cs for cs, _ in committed})
    assert not missing, f"changes acknowledged to the client but not in the database: {missing[:20]}"
    by_artifact: dict[int, list[int]] = {}
    for cs, artifact in committed:
        by_artifact.setdefault(artifact, []).append(cs)
    owed: dict[tuple[int, str], bool] = {}  # pair -> refused by the relay
    mismatches: list[str] = []
    creations = failed_as_expected = 0
    with httpx.Client(base_url=stack.frontend.url, headers=stack.admin(), timeout=30) as client:
        for artifact, changesets in sorted(by_artifact.items()):
            view = client.get(f"/api/artifacts/{artifact}").raise_for_status().json()
            values = view["values"]
            recipients = {stack.users[values["assigned_to"]], *(stack.users[u] for u in values["cc"])}
            shown = sorted(c["id"] for c in view["changesets"])
            if shown != sorted(changesets):
                mismatches.append(f"artifact {artifact}: API shows changesets {shown}, database {changesets}")
            creations += sum(1 for c in view["changesets"] if c["is_creation"])
            for cs in changesets:
                for address in recipients:
                    owed[(cs, address)] = address.startswith("bounce")
                detail = client.get(f"/api/changesets/{cs}/notification").raise_for_status().json()
                ledger = {d["address"]: d for d in detail["deliveries"]}
                if set(ledger) != recipients:
                    mismatches.append(f"changeset {cs}: ledger {sorted(ledger)} != owed {sorted(recipients)}")
                if detail["state"] != "done":
                    mismatches.append(f"changeset {cs}: state {detail['state']}")
                for address, d in ledger.items():
                    if address.startswith("bounce"):
                        if d["status"] == "failed" and (d["last_reply"] or "").startswith("550"):
                            failed_as_expected += 1
                        else:
                            mismatches.append(f"changeset {cs} {address}: {d['status']} {d['last_reply']!r}")
                    elif d["status"] != "sent":
                        mismatches.append(f"changeset {cs} {address}: {d['status']} {d['last_reply']!r}")
    received = Counter((m.changeset_id, m.rcpt_tos[0]) for m in stack.smtp.messages)
    deliverable = {pair for pair, refused in owed.items() if not refused}
    delivered = sum(1 for pair in deliverable if received[pair])
    lost_pairs = sorted(pair for pair in deliverable if not received[pair])
    return Outcome(
        changesets=len(committed),
        creations=creations,
        expected=len(owed),
        delivered=delivered,
        lost=len(lost_pairs),
        duplicated=sum(n - 1 for n in received.values() if n > 1),
        failed_as_expected=failed_as_expected,
        unexpected=[f"{pair} x{n}" for pair, n in received.items() if pair not in deliverable],
        ledger_mismatches=mismatches,
        lost_pairs=lost_pairs,
    )


@pytest.fixture
def chaos_profile() -> P.Profile:
    return P.current()
