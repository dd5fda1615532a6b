"""Request latency with notifications off, async (Redis queue) and inline (SMTP), in one run; then how
long a pushed job takes to reach the SMTP server with two workers.

    .venv/bin/python bench/bench_async.py [--requests 300] [--paced 200] [--database URL]

Needs redis-server on PATH and the test extras (aiosmtpd, httpx2). ``--database`` takes an empty database.

Everything is real: redis-server (started here, password and appendonly as in production), aiosmtpd,
three uvicorn processes serving the app over HTTP (one per mode, same database, each its own process as in
production), httpx as the client with keep-alive, and ``herald workers`` as a subprocess. The three modes
are measured interleaved (request i goes to off, async and inline in a shuffled order) so that drift in
the machine hits them alike.

1. PATCH /api/artifacts/{id} latency per mode, workers stopped (the async jobs wait in Redis), with the
   front end's logging set up as ``herald serve`` does.
2. ``herald workers`` with two workers drains that backlog; then paced async PATCHes measure the latency
   from the job's enqueue time (stamped in the job and in the outbox row) to the SMTP server accepting the
   DATA of each message, and the request latency while workers are busy on the same machine.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx2 as httpx
import redis
import uvicorn
from aiosmtpd.controller import Controller
from sqlalchemy import select, update

from herald.cli.logs import setup_logging
from herald.config import DispatchMode, ensure_secrets, load_settings
from herald.outbox import Delivery, Notification, NotificationState
from herald.tracker.artifacts import create_artifact
from herald.tracker.db import Database
from herald.tracker.models import User
from herald.tracker.projects import create_project
from herald.tracker.schema import upgrade
from herald.tracker.trackers import create_tracker
from herald.tracker.users import create_user
from herald.web import create_app

FIELDS = [
    {"name": "title", "type": "string", "required": True},
    {"name": "status", "type": "select", "options": ["Open", "Fixed", "Closed"]},
    {"name": "assigned_to", "type": "user", "notify": True},
    {"name": "cc", "type": "users", "notify": True},
    {"name": "description", "type": "text"},
]
ARTIFACTS = 30
MODES = ("off", "async", "inline")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- the services -------------------------------------------------------------------------------------


class RedisProcess:
    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not on PATH")
        self.port = free_port()
        self.password = secrets.token_hex(20)
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--requirepass", self.password,
             "--appendonly", "yes", "--dir", str(directory), "--save", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        client.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


MESSAGE_ID = re.compile(rb"^Message-ID: *(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


class Arrivals:
    """aiosmtpd handler: the time each message's DATA was accepted, by Message-ID (found with a regex:
    parsing every message would load the CPUs the workers need)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at: dict[str, float] = {}
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        match = MESSAGE_ID.search(envelope.original_content)
        with self.lock:
            if match:
                self.at.setdefault(match.group(1).decode(), now)
            self.count += 1
        return "250 2.0.0 OK"


class NullDispatcher:
    """Notifications off: the outbox row is written (same transaction), nothing is done with it."""

    def mode_for(self, project_id: int) -> DispatchMode:
        return DispatchMode.INLINE

    def after_commit(self, changeset_id: int, mode: DispatchMode) -> None:
        pass

    def close(self) -> None:
        pass


def serve(mode: str, port: int) -> None:
    """The child process of one mode: the app under uvicorn, logging as ``herald serve`` does."""
    settings = ensure_secrets(load_settings())
    setup_logging(settings, "herald.log", stderr=False)
    factory = (lambda _s, _db: NullDispatcher()) if mode == "off" else None
    uvicorn.run(
        create_app(settings, dispatcher_factory=factory),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )


class Server:
    """One mode's app in a uvicorn subprocess."""

    def __init__(self, mode: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", mode, "--port", str(self.port)], env=env
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit(f"the {mode} server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


# --- the data -----------------------------------------------------------------------------------------


def build(db: Database) -> tuple[str, list[int]]:
    """alice's token and the artifacts she updates (bob assigned, carol and dave in cc: 3 recipients)."""
    with db.session() as s:
        _, token = create_user(s, username="alice", email="alice@example.org", real_name="Alice")
        for name in ("bob", "carol", "dave"):
            create_user(s, username=name, email=f"{name}@example.org", real_name=name.title())
        project = create_project(s, name="bench", members=["alice", "bob"], admins=["alice"])
        tracker = create_tracker(
            s,
            {
                "project_id": project.id,
                "name": "bugs",
                "item_name": "bug",
                "fields": FIELDS,
                "semantics": {"title": "title", "status": "status", "assigned_to": "assigned_to"},
            },
        )
        alice = s.scalar(select(User).where(User.username == "alice"))
        ids = [
            create_artifact(
                s,
                tracker_id=tracker.id,
                author=alice,
                values={"title": f"Bug {i}", "status": "Open", "assigned_to": "bob", "cc": ["carol", "dave"]},
            ).artifact_id
            for i in range(ARTIFACTS)
        ]
    with db.session() as s:  # the set-up's own changesets are not part of the measurement
        s.execute(update(Notification).values(state=NotificationState.DONE))
    return token, ids


# --- the measurements ---------------------------------------------------------------------------------


def patch(client: httpx.Client, port: int, token: str, artifact_id: int, n: int) -> tuple[float, int]:
    started = time.perf_counter()
    r = client.patch(
        f"http://127.0.0.1:{port}/api/artifacts/{artifact_id}",
        json={"values": {"description": f"request {n}"}},
        headers={"Authorization": f"Bearer {token}"},
    )
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        raise SystemExit(f"PATCH failed: {r.status_code} {r.text}")
    return elapsed * 1000, r.json()["changeset_id"]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests per mode")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured requests per mode first")
    parser.add_argument("--paced", type=int, default=200, help="async requests for the enqueue-to-SMTP part")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between paced requests")
    parser.add_argument("--database", default=None, help="SQLAlchemy URL (default: a fresh SQLite file)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    rng = random.Random(args.seed)

    tmp = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    redis_server = RedisProcess(tmp)
    arrivals = Arrivals()
    smtp = Controller(arrivals, hostname="127.0.0.1", port=free_port(), ready_timeout=10)
    smtp.start()
    env = {
        "HERALD_DATA_DIR": str(tmp / "var"),
        "HERALD_DATABASE_URL": args.database or f"sqlite:///{tmp / 'herald.db'}",
        "HERALD_QUEUE_BACKEND": "redis",
        "HERALD_REDIS_URL": redis_server.url,
        "HERALD_SMTP_HOST": "127.0.0.1",
        "HERALD_SMTP_PORT": str(smtp.port),
        "HERALD_NB_BACKEND_WORKERS": "2",
        "HERALD_LOG_DIR": str(tmp / "log"),
    }
    base = ensure_secrets(load_settings(env={**env, "HERALD_ASYNC_EMAILS": "false"}))
    db = Database(base.database_url)
    upgrade(db.engine)
    token, artifacts = build(db)

    clean = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    servers = {
        mode: Server(mode, {**clean, **env, "HERALD_ASYNC_EMAILS": "all" if mode == "async" else "false"})
        for mode in MODES
    }
    latencies: dict[str, list[float]] = {m: [] for m in MODES}
    supervisor: subprocess.Popen[bytes] | None = None
    try:
        with httpx.Client() as client:
            n = 0
            for i in range(args.warmup + args.requests):
                order = list(MODES)
                rng.shuffle(order)
                for mode in order:
                    n += 1
                    ms, _ = patch(client, servers[mode].port, token, rng.choice(artifacts), n)
                    if i >= args.warmup:
                        latencies[mode].append(ms)

            # Part 2: two workers drain the backlog, then paced requests measure enqueue -> SMTP.
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "herald", "workers"],
                env={**clean, **env, "HERALD_ASYNC_EMAILS": "all"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

            def backlog() -> int:
                with db.session() as s:
                    unfinished = select(Notification.changeset_id).where(
                        Notification.state != NotificationState.DONE
                    )
                    return len(s.scalars(unfinished).all())

            drained_from = time.perf_counter()
            wait_for(lambda: backlog() == 0, "the workers to drain the backlog")
            drain_seconds = time.perf_counter() - drained_from
            drained_jobs = args.warmup + args.requests

            busy: list[float] = []
            changesets: list[int] = []
            for _ in range(args.paced):
                ms, cs = patch(client, servers["async"].port, token, rng.choice(artifacts), n)
                n += 1
                busy.append(ms)
                changesets.append(cs)
                time.sleep(args.interval)
            wait_for(lambda: backlog() == 0, "the paced jobs to be delivered")
    finally:
        if supervisor is not None:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(timeout=60)
        for server in servers.values():
            server.stop()

    with db.session() as s:
        rows = s.execute(
            select(Notification.changeset_id, Notification.queued_at).where(
                Notification.changeset_id.in_(changesets)
            )
        ).all()
        mids = s.execute(
            select(Delivery.changeset_id, Delivery.message_id).where(Delivery.changeset_id.in_(changesets))
        ).all()
    queued = {cs: (q if q.tzinfo else q.replace(tzinfo=UTC)).timestamp() for cs, q in rows}
    to_smtp = [(arrivals.at[mid] - queued[cs]) * 1000 for cs, mid in mids if mid in arrivals.at]

    smtp.stop()
    redis_server.stop()
    db.dispose()

    off = latencies["off"]
    database = "SQLite" if not args.database else args.database.split(":")[0]
    print(
        f"herald bench_async — {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, database {database}, "
        f"{args.requests} measured PATCH requests per mode (+{args.warmup} warm-up), 3 recipients each"
    )
    print()
    print(f"{'mode':<28}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'p50/off':>9}{'p99/off':>9}")
    rows_out = [(m, latencies[m]) for m in MODES] + [("async, 2 workers busy", busy)]
    for name, values in rows_out:
        print(
            f"{name:<28}{pct(values, 50):>9.2f}{pct(values, 99):>9.2f}{statistics.fmean(values):>9.2f}"
            f"{pct(values, 50) / pct(off, 50):>9.2f}{pct(values, 99) / pct(off, 99):>9.2f}"
        )
    print()
    extra_p50 = pct(latencies["async"], 50) - pct(off, 50)
    extra_p99 = pct(latencies["async"], 99) - pct(off, 99)
    print(f"async minus off: p50 {extra_p50:+.2f} ms, p99 {extra_p99:+.2f} ms")
    print(
        f"backlog of {drained_jobs} jobs ({3 * drained_jobs} mails) drained by 2 workers in "
        f"{drain_seconds:.2f} s ({3 * drained_jobs / drain_seconds:.0f} mails/s)"
    )
    print(
        f"enqueue -> SMTP accepted, {len(to_smtp)} mails of {args.paced} paced async requests "
        f"(one every {args.interval * 1000:.0f} ms): p50 {pct(to_smtp, 50):.1f} ms, "
        f"p99 {pct(to_smtp, 99):.1f} ms, max {max(to_smtp):.1f} ms"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
