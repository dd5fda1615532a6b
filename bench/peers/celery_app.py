"""Celery peer: ``celery -A celery_app worker --pool prefork --concurrency 2`` (Redis broker, defaults
otherwise: early ack, prefetch multiplier 4, no result backend)."""

from __future__ import annotations

import os

import jobs
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bench.send_change")
def send_change(change_id: int, enqueued: float) -> None:
    jobs.send_change(change_id, enqueued)


def enqueue(change_id: int, enqueued: float) -> None:
    send_change.delay(change_id, enqueued)
