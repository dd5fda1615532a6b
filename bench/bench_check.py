"""How long ``herald check`` takes on a large backlog.

Builds a tracker database holding ``--rows`` notifications (default 100,000: a third of them undelivered —
pending, queued, retrying, running — the rest done, three ledger rows each, many sent within the last
minutes) in SQLite, and in PostgreSQL when ``--pg-url`` (or the machine's server at HERALD_TEST_PG_URL) is
reachable; then times ``run_check`` (the library call behind ``herald check`` and ``GET /api/check``) and
the whole ``herald check`` command, best and median of ``--runs``. ``--profile`` prints a cProfile of one
check.

    .venv/bin/python -m bench.bench_check              # SQLite, and PostgreSQL if reachable
    .venv/bin/python -m bench.bench_check --rows 20000 --runs 3 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from bench.bench_async import FIELDS
from sqlalchemy import create_engine, insert, select, text

from herald.config import Settings, ensure_secrets, load_settings
from herald.ops.check import run_check
from herald.outbox.tables import Delivery, Notification
from herald.queue import make_queue
from herald.tracker.artifacts import create_artifact
from herald.tracker.db import Database
from herald.tracker.models import Changeset, User, utcnow
from herald.tracker.projects import create_project
from herald.tracker.schema import upgrade
from herald.tracker.trackers import create_tracker
from herald.tracker.users import create_user

PG_ADMIN_URL = os.environ.get("HERALD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CHUNK = 5000


def build_backlog(db: Database, rows: int) -> None:
    """``rows`` changesets on one artifact, each with its notification and three ledger rows."""
    with db.session() as s:
        alice, _ = create_user(s, username="alice", email="alice@example.org", real_name="Alice")
        project = create_project(s, name="big", members=["alice"], admins=["alice"])
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
        author = s.get(User, alice.id)
        first = create_artifact(s, tracker_id=tracker.id, author=author, values={"title": "the one"})
        artifact_id, author_id, base = first.artifact_id, author.id, first.id
    now = utcnow()
    states = ["done", "done", "pending", "queued", "retrying", "running"]
    with db.engine.begin() as conn:
        for start in range(0, rows, CHUNK):
            ids = range(base + 1 + start, base + 1 + min(rows, start + CHUNK))
            created = {i: now - timedelta(seconds=(base + rows - i) * 0.05) for i in ids}
            conn.execute(
                insert(Changeset),
                [
                    {"id": i, "artifact_id": artifact_id, "author_id": author_id, "created_at": created[i]}
                    for i in ids
                ],
            )
            conn.execute(
                insert(Notification),
                [
                    {
                        "changeset_id": i,
                        "mode": "async",
                        "state": states[i % len(states)],
                        "created_at": created[i],
                        "attempts": 1,
                        "fence": 1,
                    }
                    for i in ids
                ],
            )
            deliveries = []
            for i in ids:
                done = states[i % len(states)] == "done"
                for who in ("bob", "carol", "dave"):
                    deliveries.append(
                        {
                            "changeset_id": i,
                            "address": f"{who}@example.org",
                            "reason": "cc",
                            "status": "sent" if done else ("retrying" if i % 2 else "pending"),
                            "attempts": 1,
                            "last_reply": None if done else "451 4.3.0 try later",
                            "updated_at": created[i] + timedelta(seconds=1),
                            "sent_at": created[i] + timedelta(seconds=1) if done else None,
                        }
                    )
            conn.execute(insert(Delivery), deliveries)


def settings_for(url: str, data_dir: Path) -> Settings:
    return ensure_secrets(
        load_settings(
            env={
                "HERALD_DATA_DIR": str(data_dir),
                "HERALD_DATABASE_URL": url,
                "HERALD_ASYNC_EMAILS": "all",
                "HERALD_QUEUE_BACKEND": "sql",
            }
        )
    )


def time_library(settings: Settings, runs: int, profile: bool) -> list[float]:
    db = Database(settings.database_url)
    queue = make_queue(settings)
    try:
        run_check(settings, db, queue)  # connections and statements warm, as in a long-lived web process
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            report = run_check(settings, db, queue)
            times.append(time.perf_counter() - start)
        print(f"  verdict: {report.summary()}")
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            run_check(settings, db, queue)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        return times
    finally:
        queue.close()
        db.dispose()


def time_command(settings: Settings, runs: int) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(
        HERALD_DATA_DIR=str(settings.data_dir),
        HERALD_DATABASE_URL=settings.database_url,
        HERALD_ASYNC_EMAILS="all",
        HERALD_QUEUE_BACKEND="sql",
    )
    times, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "herald", "check"], env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    print(line("herald check (whole command, CPU time)", cpu))
    return times


def line(name: str, times: list[float]) -> str:
    return f"  {name}: best {min(times) * 1000:.1f} ms, median {statistics.median(times) * 1000:.1f} ms"


def bench(name: str, url: str, data_dir: Path, args: argparse.Namespace) -> None:
    db = Database(url)
    upgrade(db.engine)
    start = time.perf_counter()
    build_backlog(db, args.rows)
    if db.engine.dialect.name == "postgresql":  # what autovacuum does after a bulk load: planner statistics
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    with db.read() as s:
        count = s.scalar(select(text("count(*)")).select_from(Notification))
    db.dispose()
    print(f"{name}: {count} notifications built in {time.perf_counter() - start:.1f} s")
    settings = settings_for(url, data_dir)
    print(line("run_check (library, warm)", time_library(settings, args.runs, args.profile)))
    print(line("herald check (whole command, wall clock)", time_command(settings, max(1, args.runs // 2))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one check")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench("sqlite", f"sqlite:///{tmp}/herald.db", Path(tmp), args)
        if not args.no_pg:
            bench_pg(Path(tmp), args)


def bench_pg(tmp: Path, args: argparse.Namespace) -> None:
    name = f"herald_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"postgresql: skipped ({exc.__class__.__name__}: not reachable at {PG_ADMIN_URL})")
        admin.dispose()
        return
    try:
        bench("postgresql", f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}", tmp / "pg", args)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
