"""How fast the notifier turns one changeset into mails: 50 recipients in two languages, a few time zones,
members and outsiders, HTML and text readers.

    .venv/bin/python bench/bench_notify.py [--recipients 50] [--rounds 20]

Prints mails built per second (planning only, then planning plus SMTP serialization) and the number of
renderings built per changeset. Uses a throw-away SQLite database.
"""

from __future__ import annotations

import argparse
import email.policy
import statistics
import tempfile
import time
from pathlib import Path

from herald.config import load_settings
from herald.notify import plan_notification
from herald.tracker.artifacts import create_artifact, update_artifact
from herald.tracker.db import Database
from herald.tracker.models import Base, User
from herald.tracker.projects import create_project
from herald.tracker.trackers import create_tracker
from herald.tracker.users import create_user

FIELDS = [
    {"name": "title", "type": "string", "required": True},
    {"name": "status", "type": "select", "options": ["Open", "Fixed", "Closed"]},
    {"name": "assigned_to", "type": "user"},
    {"name": "cc", "type": "users", "notify": True},
    {"name": "description", "type": "text"},
    {"name": "severity", "type": "int"},
    {"name": "internal_notes", "type": "text", "read_permission": "members"},
]
ZONES = ["UTC", "Europe/Paris", "America/New_York"]


def build(db: Database, recipients: int) -> int:
    """A public project whose artifact has ``recipients`` users in CC; returns the update's changeset id."""
    with db.session() as s:
        author, _ = create_user(s, username="author", email="author@example.org", real_name="Ann Author")
        names = []
        for i in range(recipients):
            name = f"user{i:03d}"
            create_user(
                s,
                username=name,
                email=f"{name}@example.org",
                real_name=f"User {i}",
                language="fr" if i % 2 else "en",
                timezone=ZONES[i % 3] if i % 10 == 0 else "UTC",
                mail_format="text" if i % 7 == 0 else "html",
            )
            names.append(name)
        project = create_project(s, name="bench", members=["author", *names[::5]])
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
        author = s.get(User, author.id)
        cs = create_artifact(
            s,
            tracker_id=tracker.id,
            author=author,
            values={
                "title": "Saving a large file crashes the editor",
                "status": "Open",
                "cc": names,
                "description": "Steps:\n1. open a 2 GB file\n2. save\n\nExpected: saved. Actual: crash.",
                "severity": 2,
            },
        )
        update = update_artifact(
            s,
            artifact_id=cs.artifact_id,
            author=author,
            values={"status": "Fixed", "internal_notes": "root cause: buffer overflow in save()"},
            comment="Fixed in build 4242, thanks @user001 for the report.",
        )
        return update.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'bench.db'}")
        Base.metadata.create_all(db.engine)
        settings = load_settings(
            env={"HERALD_BASE_URL": "https://tracker.example.org", "HERALD_DATA_DIR": tmp}
        )
        changeset = build(db, args.recipients)

        def plan():
            with db.session() as s:
                return plan_notification(s, settings, changeset, "bench-secret")

        plan()  # warm up: template compilation, zoneinfo, SQLAlchemy statement caches
        plan_times, full_times = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            result = plan()
            t1 = time.perf_counter()
            size = sum(len(o.message.as_bytes(policy=email.policy.SMTP)) for o in result.outgoing)
            t2 = time.perf_counter()
            plan_times.append(t1 - t0)
            full_times.append(t2 - t0)
        db.dispose()
    mails = result.recipients
    plan_s, full_s = statistics.median(plan_times), statistics.median(full_times)
    print(f"changeset with {mails} recipients, {args.rounds} rounds (median)")
    print(f"  renderings built per changeset: {result.renderings}")
    print(f"  plan (load, recipients, render, build): {plan_s * 1000:.1f} ms, {mails / plan_s:,.0f} mails/s")
    print(f"  plan + SMTP bytes:                      {full_s * 1000:.1f} ms, {mails / full_s:,.0f} mails/s")
    print(f"  average message size: {size / mails:,.0f} bytes")


if __name__ == "__main__":
    main()
