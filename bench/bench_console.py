"""What one admin console poll and page cost on a big ledger: ``/admin/live.json`` (queue stats, backlog,
the hour's sent-per-minute chart) and ``/admin`` (plus the check, workers, dead letters, recent rows).

Seeds N changesets with 3 deliveries each, sent over the last hour, and a backlog of unfinished ones, in
SQLite (or a PostgreSQL URL), then times requests through the ASGI app::

    .venv/bin/python bench/bench_console.py [--changes 100000] [--backlog 10000] [--database postgresql://...]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient
from sqlalchemy import insert
from tests.support.tracker import build_world

from herald.config import ensure_secrets, load_settings
from herald.outbox import Delivery, Notification
from herald.tracker.db import Database
from herald.tracker.models import Changeset, utcnow
from herald.tracker.schema import upgrade
from herald.web import create_app


def seed(db: Database, changes: int, backlog: int) -> None:
    world = build_world(db)
    from tests.support.beds import new_changeset

    first = new_changeset(db, world)
    with db.session() as s:
        artifact = s.get(Changeset, first).artifact_id
    now = utcnow()
    rng = random.Random(1)
    batch = 5000
    alice = world.users["alice"].id
    for start in range(0, changes + backlog, batch):
        ids = range(first + 1 + start, first + 1 + min(start + batch, changes + backlog))
        created = {i: now - timedelta(seconds=rng.uniform(60, 3600)) for i in ids}
        done = {i for i in ids if i - first - 1 < changes}
        changesets = [
            {"id": i, "artifact_id": artifact, "author_id": alice, "created_at": created[i],
             "is_creation": False, "comment_private": False, "mentioned_user_ids": []}
            for i in ids
        ]  # fmt: skip
        notifications = [
            {"changeset_id": i, "mode": "async", "state": "done" if i in done else "queued",
             "created_at": created[i], "attempts": int(i in done), "fence": 0}
            for i in ids
        ]  # fmt: skip
        sent = [
            {"changeset_id": i, "address": f"u{k}@example.org", "reason": "cc", "status": "sent",
             "attempts": 1, "updated_at": created[i] + timedelta(seconds=2),
             "sent_at": created[i] + timedelta(seconds=2), "last_reply": "250 ok"}
            for i in sorted(done)
            for k in range(3)
        ]  # fmt: skip
        with db.write() as conn:
            conn.execute(insert(Changeset), changesets)
            conn.execute(insert(Notification), notifications)
            if sent:
                conn.execute(insert(Delivery), sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--database", default=None)
    parser.add_argument("--keep", default=None, help="seed into (or reuse) this directory")
    args = parser.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="herald-console-"))
    fresh = not (tmp / "herald.db").exists()
    env = {"HERALD_DATA_DIR": str(tmp)}
    if args.database:
        env["HERALD_DATABASE_URL"] = args.database
    settings = ensure_secrets(load_settings(env=env))
    db = Database(settings.database_url)
    upgrade(db.engine)
    t = time.perf_counter()
    if fresh or args.database:
        seed(db, args.changes, args.backlog)
    print(
        f"seeded {args.changes} sent changes (x3 deliveries) and {args.backlog} queued"
        f" in {time.perf_counter() - t:.1f} s"
    )
    with TestClient(create_app(settings)) as client:
        r = client.post("/admin/login", data={"token": settings.admin_token}, follow_redirects=False)
        assert r.status_code == 303, r.text
        for path in ("/admin/live.json", "/admin"):
            times = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                r = client.get(path)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200
            print(
                f"{path}: median {statistics.median(times):.0f} ms, max {max(times):.0f} ms"
                f" ({args.rounds} rounds)"
            )
        data = client.get("/admin/live.json").json()
        print(f"sent last hour: {data['sent_last_hour']}, unfinished: {data['outbox']['unfinished']}")
    db.dispose()


if __name__ == "__main__":
    main()
