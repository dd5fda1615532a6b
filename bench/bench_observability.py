"""What the logs and the metrics cost: one log line (text, JSON) into a file, the counting a worker does per
job, one flush of its counts to the database, and one scrape of /metrics' collector. SQLite in a temp dir::

    .venv/bin/python bench/bench_observability.py [--lines 20000] [--jobs 20000] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from herald.cli.logs import setup_logging
from herald.config import ensure_secrets, load_settings
from herald.delivery import DeliveryOutcome, Verdict
from herald.ops.metrics import HeraldCollector, render_metrics
from herald.outbox import stats
from herald.queue import Job, make_queue
from herald.tracker.db import Database
from herald.tracker.schema import upgrade
from herald.worker.hooks import JobResult, MetricsHook


def per_call_us(n: int, fn) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("text", "json"):
            settings = ensure_secrets(load_settings(env={"HERALD_DATA_DIR": tmp, "HERALD_LOG_FORMAT": fmt}))
            setup_logging(settings, f"bench-{fmt}.log")
            log = logging.getLogger("herald.notification")
            us = per_call_us(
                args.lines,
                lambda log=log: log.info(
                    "Notification: sent changeset_id=%d recipient=%s reply=%r",
                    4242,
                    "bob@example.org",
                    "250 2.0.0 Ok: queued as 4XzQ1",
                ),
            )
            print(f"log line ({fmt}) into a file: {us:.1f} us")

        db = Database(settings.database_url)
        upgrade(db.engine)
        hook = MetricsHook(db)
        outcome = DeliveryOutcome(
            Verdict.DONE,
            1,
            recipients=3,
            sent=3,
            attempts={("sent", "2xx"): 2, ("retrying", "4xx"): 1},
            latencies=(0.8, 1.3),
        )
        result = JobResult(Job.new(1), "ack", outcome, 0.0, "", 12.0)
        us = per_call_us(args.jobs, lambda: hook.job_settled(None, result))  # type: ignore[arg-type]
        print(f"counting one job (3 recipients) in a worker: {us:.2f} us")
        started = time.perf_counter()
        hook.flush()
        print(f"one flush of those counts (one transaction): {(time.perf_counter() - started) * 1000:.2f} ms")
        for _ in range(50):  # a second's worth of counts, 50 times: the steady state of a busy worker
            hook.job_settled(None, result)  # type: ignore[arg-type]
        flush_ms = per_call_us(20, lambda: (hook.job_settled(None, result), hook.flush())) / 1000  # type: ignore[arg-type]
        print(f"steady flush: {flush_ms:.2f} ms")

        queue = make_queue(settings)
        collector = HeraldCollector(settings, db, queue)
        size = len(render_metrics(collector))
        ms = per_call_us(args.scrapes, lambda: render_metrics(collector)) / 1000
        print(f"one scrape of /metrics' collector (SQLite, SQL queue): {ms:.2f} ms, {size} bytes")
        with db.read() as s:
            print(f"series in delivery_counters: {len(stats.read(s.connection()))}")
        queue.close()
        db.dispose()


if __name__ == "__main__":
    main()
