"""Memory of one delivery run for a change with 5,000 recipients (10 global lists of 500 addresses).

herald 0.1 built every recipient's message before sending (about 60 KB per recipient, all held at once:
+315 MB for this change). The delivery engine renders and sends a batch at a time, so what it holds grows
with the batch, not with the recipient count. This measures the resident set of a process that delivers the
change into postfix's ``smtp-sink``: its baseline after a warm-up delivery, and the peak during the run
(sampled every 5 ms). Run it with::

    .venv/bin/python bench/bench_memory.py [--recipients 5000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_async import FIELDS, free_port

from herald.config import DispatchMode, ensure_secrets, load_settings
from herald.delivery import Deliverer
from herald.mail import make_pool
from herald.outbox import records
from herald.tracker.artifacts import create_artifact
from herald.tracker.db import Database
from herald.tracker.models import User
from herald.tracker.projects import create_project
from herald.tracker.schema import upgrade
from herald.tracker.trackers import create_tracker
from herald.tracker.users import create_user


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def change(db: Database, tracker_id: int, title: str) -> int:
    with db.session() as s:
        alice = s.scalar(select(User).where(User.username == "alice"))
        cs = create_artifact(s, tracker_id=tracker_id, author=alice, values={"title": title})
        records.record(s, cs.id, DispatchMode.ASYNC, cs.created_at)
        s.flush()
        return cs.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=5000)
    args = parser.parse_args()
    sink_binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    tmp = Path(tempfile.mkdtemp(prefix="herald-mem-"))
    port = free_port()
    sink = subprocess.Popen(
        [sink_binary, "-u", "nobody", "-c", f"127.0.0.1:{port}", "256"], stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(0.3)
        env = {"HERALD_DATA_DIR": str(tmp), "HERALD_SMTP_HOST": "127.0.0.1", "HERALD_SMTP_PORT": str(port)}
        settings = ensure_secrets(load_settings(env=env))
        db = Database(settings.database_url)
        upgrade(db.engine)
        lists = [
            {"addresses": [f"r{i * 500 + j}@example.net" for j in range(500)], "check_permissions": False}
            for i in range((args.recipients + 499) // 500)
        ]
        with db.session() as s:
            create_user(s, username="alice", email="alice@example.org", real_name="Alice")
            project = create_project(s, name="big", members=["alice"], admins=["alice"])
            tracker = create_tracker(
                s,
                {
                    "project_id": project.id,
                    "name": "bugs",
                    "item_name": "bug",
                    "fields": FIELDS,
                    "semantics": {"title": "title", "status": "status", "assigned_to": "assigned_to"},
                    "notifications": {"mode": "all_updates", "lists": lists},
                },
            ).id
        with ThreadPoolExecutor(8) as senders:
            deliverer = Deliverer(db, settings, make_pool(settings, max_connections=8), senders=senders)
            warm = change(db, tracker, "warm-up")
            deliverer.deliver(warm, holder="warm", mode=DispatchMode.ASYNC)
            big = change(db, tracker, "the big one")
            baseline = rss_kib()
            peak = [baseline]
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.005):
                    peak[0] = max(peak[0], rss_kib())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.perf_counter()
            outcome = deliverer.deliver(big, holder="big", mode=DispatchMode.ASYNC)
            elapsed = time.perf_counter() - started
            done.set()
            sampler.join()
        after = rss_kib()
        mib = [value / 1024 for value in (baseline, peak[0], after)]
        print(
            f"recipients: {outcome.recipients}, sent {outcome.sent}, failed {outcome.failed}, {elapsed:.2f}s"
        )
        print("RSS baseline {:.1f} MiB, peak {:.1f} MiB, after {:.1f} MiB".format(*mib))
        print(
            f"growth: peak +{(peak[0] - baseline) / 1024:.1f} MiB, kept +{(after - baseline) / 1024:.1f} MiB "
            f"({(peak[0] - baseline) * 1024 / max(1, outcome.recipients):.0f} B per recipient at peak)"
        )
    finally:
        sink.terminate()
        sink.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
