"""Dramatiq peer: ``dramatiq dramatiq_app --processes 2 --threads 8`` (Redis broker, default middleware:
retries with backoff, ack after the job)."""

from __future__ import annotations

import os

import dramatiq
import jobs
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=os.environ["BENCH_REDIS_URL"]))


@dramatiq.actor(actor_name="send_change")
def send_change(change_id: int, enqueued: float) -> None:
    jobs.send_change(change_id, enqueued)


def enqueue(change_id: int, enqueued: float) -> None:
    send_change.send(change_id, enqueued)
