"""The chaos suite's installation, all real processes: `herald serve` (the front end, over real HTTP),
`herald workers` (the supervisor and its workers), a redis-server of the test's own (password, AOF), an
aiosmtpd relay that is slow, flaky and refuses some recipients, and SQLite or PostgreSQL."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
from sqlalchemy import func, select

from herald.config import Settings
from herald.outbox import Notification, NotificationState
from herald.tracker.db import Database
from herald.tracker.models import Changeset
from tests.support.redis_server import RedisServer
from tests.support.services import free_port
from tests.support.smtp import SmtpServer
from tests.support.system import WorkerProcesses, clean_environment
from tests.support.tracker import World
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
            # Up means answering with its database reachable; "degraded" (503) only says workers or relays are
            # down, which they may be here (the front end is restarted on its own).
            return httpx.get(f"{self.url}/healthz", timeout=2).json().get("database") == "ok"
        except (httpx.TransportError, ValueError):
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
        "HERALD_SMTP_TIMEOUT": "15",  # a loaded machine must not turn a slow reply into a resend
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
