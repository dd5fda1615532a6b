"""The whole system end to end: the HTTP app in-process, ``herald workers`` (the supervisor and its worker
subprocesses) as real processes, a real redis-server, aiosmtpd, and SQLite or PostgreSQL.

Randomness (which fields change, when a process is killed) comes from ``HERALD_TEST_SEED`` (a fixed
default, so CI runs are repeatable). Every wait is on an event: mail received, rows done, a heartbeat.
"""

from __future__ import annotations

import functools
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from herald.config import Settings, ensure_secrets, load_settings
from herald.outbox import Notification, NotificationState
from herald.tracker.db import Database
from herald.web import create_app
from tests.support.redis_server import RedisServer
from tests.support.smtp import SmtpServer
from tests.support.system import Tally, WorkerProcesses
from tests.support.tracker import World, build_world, make_database
from tests.support.waiting import wait_until as _wait_until

SEED = int(os.environ.get("HERALD_TEST_SEED", "20261128"))
RECIPIENTS = ("bob@example.org", "carol@example.org", "dave@example.org")
DEADLINE = 40.0
wait_until = functools.partial(_wait_until, timeout=DEADLINE)


@dataclass
class Stack(WorkerProcesses):
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
        self.artifacts.append(body["id"])
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
        stack.stop_all_workers()
        stack.client.__exit__(None, None, None)
        stack.db.dispose()


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    """SQLite, Redis, 2 workers, async for every project."""
    return make_stack()
