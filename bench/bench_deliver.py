"""CPU per change of one delivery run, alone in a loop: what a worker's throughput is made of.

Seeds 200 artifacts with 3 recipients each (as ``bench_async.py``), makes N changes, and delivers them one
after another with ``herald.delivery.Deliverer`` into postfix's ``smtp-sink`` (no queue, no threads).
Prints wall and CPU milliseconds per change; ``--profile`` prints cProfile's top functions as well::

    .venv/bin/python bench/bench_deliver.py [--changes 300] [--profile] [--database postgresql://...]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_async import build, free_port

from herald.config import DispatchMode, ensure_secrets, load_settings
from herald.delivery import Deliverer
from herald.mail import make_pool
from herald.outbox import records
from herald.tracker.artifacts import update_artifact
from herald.tracker.db import Database
from herald.tracker.models import User
from herald.tracker.schema import upgrade


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--database", default=None, help="a PostgreSQL URL (default: SQLite in a temp dir)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="herald-deliver-"))
    port = free_port()
    sink = subprocess.Popen(
        [
            shutil.which("smtp-sink") or "/usr/sbin/smtp-sink",
            "-u",
            "nobody",
            "-c",
            f"127.0.0.1:{port}",
            "256",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        env = {"HERALD_DATA_DIR": str(tmp), "HERALD_SMTP_HOST": "127.0.0.1", "HERALD_SMTP_PORT": str(port)}
        if args.database:
            env["HERALD_DATABASE_URL"] = args.database
        settings = ensure_secrets(load_settings(env=env))
        db = Database(settings.database_url)
        upgrade(db.engine)
        _, artifacts = build(db)
        changes = []
        with db.session() as s:
            alice = s.scalar(select(User).where(User.username == "alice"))
            for i in range(args.changes + 1):
                cs = update_artifact(
                    s,
                    artifact_id=artifacts[i % len(artifacts)],
                    author=alice,
                    values={"description": f"d{i}"},
                )
                records.record(s, cs.id, DispatchMode.ASYNC, cs.created_at)
                s.flush()
                changes.append(cs.id)
        deliverer = Deliverer(db, settings, make_pool(settings, max_connections=1))
        deliverer.deliver(changes[0], holder="warm-up", mode=DispatchMode.ASYNC)
        profile = cProfile.Profile() if args.profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profile:
            profile.enable()
        for cs in changes[1:]:
            outcome = deliverer.deliver(cs, holder=f"bench-{cs}", mode=DispatchMode.ASYNC)
            assert outcome.sent == 3, outcome
        if profile:
            profile.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        n = len(changes) - 1
        note = " (under cProfile)" if profile else ""
        per = f"{1000 * wall / n:.2f} ms wall, {1000 * cpu / n:.2f} ms CPU"
        print(f"{n} changes, 3 recipients each: {per}{note}")
        if profile:
            pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
    finally:
        sink.terminate()
        sink.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
