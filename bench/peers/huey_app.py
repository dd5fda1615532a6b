"""huey peer: ``huey_consumer huey_app.huey -k process -w 2`` (RedisHuey, blocking pop, defaults
otherwise)."""

from __future__ import annotations

import os

import jobs
from huey import RedisHuey

huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"])


@huey.task()
def send_change(change_id: int, enqueued: float) -> None:
    jobs.send_change(change_id, enqueued)


def enqueue(change_id: int, enqueued: float) -> None:
    send_change(change_id, enqueued)
