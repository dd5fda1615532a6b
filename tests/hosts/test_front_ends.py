"""Two ``herald serve`` front ends on one PostgreSQL, behind a round-robin client: they start together on a
new database (one migrates, the other waits), and concurrent updates of one artifact lose no change — the
old→new values of its changesets form one unbroken chain ending at the artifact's value."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from herald.tracker.models import Changeset, Field, FieldChange
from tests.e2e.conftest import Stack, stack_env
from tests.support.redis_server import RedisServer
from tests.support.smtp import SmtpServer
from tests.support.waiting import wait_until

WRITERS = 6
UPDATES_EACH = 8


class FrontEnds:
    """``herald serve`` processes, each on its own port, and a client that takes them in turn."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self._turn = 0
        self._lock = threading.Lock()

    def start(self, count: int) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        for i in range(count):
            out = (self.tmp_path / f"serve-{i}.out").open("wb")
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "herald", "serve", "--port", "0"],
                    env={**clean, **self.env, "HERALD_NODE_NAME": f"web-{i}"},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
            out.close()
        for i, process in enumerate(self.processes):
            path = self.tmp_path / f"serve-{i}.out"

            def address(path: Path = path, process: subprocess.Popen[bytes] = process) -> str | None:
                assert process.poll() is None, path.read_text()
                found = re.search(r"herald serve: (http://\S+)", path.read_text())
                return found.group(1) if found else None

            self.urls.append(wait_until(address, f"front end {i} listening", timeout=60))

    def next_url(self) -> str:
        with self._lock:
            self._turn += 1
            return self.urls[self._turn % len(self.urls)]

    def request(self, method: str, path: str, token: str, body: object | None = None) -> dict[str, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.next_url() + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as response:
            assert response.status in (200, 201)
            return json.loads(response.read())

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def front_ends(
    tmp_path: Path, pg_url: str, smtp_server: SmtpServer, redis_server: RedisServer, redis_namespace: str
) -> Iterator[FrontEnds]:
    env = stack_env(tmp_path, pg_url, smtp_server, redis_server, redis_namespace)
    fronts = FrontEnds(env, tmp_path)
    try:
        yield fronts
    finally:
        fronts.stop()


def test_two_front_ends_lose_no_concurrent_change(
    front_ends: FrontEnds, pg_url: str, make_stack: Callable[..., Stack]
) -> None:
    front_ends.start(2)  # both migrate the new, empty database at once
    stack = make_stack(pg_url)  # the users, projects and tracker (the schema is there already)
    token = stack.world.tokens["alice"]
    created = front_ends.request(
        "POST",
        f"/api/trackers/{stack.world.bugs.id}/artifacts",
        token,
        {"values": {"title": "Shared bug", "assigned_to": "bob", "description": "v0"}},
    )
    artifact_id = created["id"]  # type: ignore[index]

    accepted: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(WRITERS)

    def writer(n: int) -> None:
        try:
            start.wait()
            for k in range(UPDATES_EACH):
                body = front_ends.request(
                    "PATCH", f"/api/artifacts/{artifact_id}", token, {"values": {"description": f"w{n}-{k}"}}
                )
                accepted.append(int(body["changeset_id"]))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not errors, errors
    assert len(accepted) == len(set(accepted)) == WRITERS * UPDATES_EACH

    with stack.db.read() as s:
        description = s.scalar(
            select(Field.id).where(Field.tracker_id == stack.world.bugs.id, Field.name == "description")
        )
        chain = s.execute(
            select(Changeset.id, FieldChange.old_value, FieldChange.new_value)
            .join(FieldChange, FieldChange.changeset_id == Changeset.id)
            .where(Changeset.artifact_id == artifact_id, FieldChange.field_id == description)
            .order_by(Changeset.id)
        ).all()
    final = front_ends.request("GET", f"/api/artifacts/{artifact_id}", token)
    updates = [row for row in chain if row.id in set(accepted)]
    assert len(updates) == WRITERS * UPDATES_EACH  # every accepted update wrote its change
    links = [(None, "v0")] + [(row.old_value, row.new_value) for row in chain[1:]]
    broken = [(a, b) for a, b in itertools.pairwise(links) if a[1] != b[0]]
    assert broken == []  # each change starts from the value the one before it left
    view = final.get("artifact", final)
    assert view["values"]["description"] == chain[-1].new_value  # type: ignore[index]
    print(f"front ends: 2, writers: {WRITERS}, changes: {len(updates)}, lost: 0, chain breaks: {len(broken)}")
