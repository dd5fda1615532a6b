"""RQ peer: two ``rq worker`` processes on the default queue (each forks a work horse per job, RQ's
default Worker class)."""

from __future__ import annotations

import os

import jobs
from redis import Redis
from rq import Queue

queue = Queue("default", connection=Redis.from_url(os.environ["BENCH_REDIS_URL"]))


def enqueue(change_id: int, enqueued: float) -> None:
    queue.enqueue(jobs.send_change, change_id, enqueued)
