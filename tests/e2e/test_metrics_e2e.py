"""/metrics end to end: real worker processes (two generations of them) deliver to aiosmtpd answering 250,
451 and 550, and one scrape of the web app counts what every one of them did, exactly once."""

from __future__ import annotations

import itertools
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from herald.outbox import Delivery, DeliveryStatus
from tests.e2e.conftest import Stack, wait_until

pytestmark = pytest.mark.slow

BOB, CAROL, DAVE = "bob@example.org", "carol@example.org", "dave@example.org"


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape of the web app's /metrics, as ``{(sample name, sorted labels): value}``."""
    r = stack.client.get("/metrics")
    assert r.status_code == 200
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def attempts(samples, outcome: str, smtp_class: str) -> float:
    key = ("herald_delivery_attempts_total", (("outcome", outcome), ("smtp_class", smtp_class)))
    return samples.get(key, 0.0)


def ledger_attempts(stack: Stack) -> int:
    with stack.db.read() as s:
        return int(s.scalar(select(func.coalesce(func.sum(Delivery.attempts), 0))))


def sent_count(stack: Stack) -> int:
    with stack.db.read() as s:
        return int(
            s.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == DeliveryStatus.SENT))
        )


def refused(stack: Stack) -> int:
    with stack.db.read() as s:
        return int(s.scalar(select(func.count()).where(Delivery.address == CAROL, Delivery.attempts >= 1)))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_one_scrape_counts_every_worker_process_once(make_stack, request, database):
    url = request.getfixturevalue("pg_url") if database == "postgresql" else None
    # One delivery at a time per worker: the two workers of a generation share the jobs.
    stack: Stack = make_stack(url, HERALD_WORKER_CONCURRENCY="1")
    stack.smtp.refuse_recipient(DAVE)  # 550: failed for good
    stack.smtp.refuse_recipient(CAROL, "451 4.7.1 greylisted")  # 4xx: retried until accepted

    first = stack.start_workers()
    stack.wait_workers(2)
    for _ in range(4):
        stack.create()
    for _ in range(4):
        stack.update()
    # Every change reached bob, and carol was refused at least once each.
    wait_until(lambda: sent_count(stack) >= 8, "bob's 8 mails sent")
    wait_until(lambda: refused(stack) == 8, "carol refused for each of the 8 changes")
    stack.smtp.accept_recipient(CAROL)
    assert stack.stop_workers(first) == 0

    second = stack.start_workers()  # new processes: the totals go on from where the first ones left
    stack.wait_workers(2)
    for _ in range(4):
        stack.update()
    expected_sent = 2 * len(stack.changesets)
    wait_until(lambda: sent_count(stack) == expected_sent and stack.all_done(), "every change delivered")
    assert stack.tally().duplicated == 0

    # Workers add what they counted about once a second: wait for the scrape to catch up, then check all.
    wait_until(lambda: attempts(scrape(stack), "sent", "2xx") >= expected_sent, "the sends in /metrics")
    wait_until(
        lambda: (
            sum(v for (n, _), v in scrape(stack).items() if n == "herald_delivery_attempts_total")
            >= ledger_attempts(stack)
        ),
        "every attempt in /metrics",
    )
    samples = scrape(stack)
    changes = len(stack.changesets)
    assert attempts(samples, "sent", "2xx") == expected_sent
    assert attempts(samples, "failed", "5xx") == changes
    greylisted = attempts(samples, "retrying", "4xx")
    assert greylisted >= 8
    # Nothing counted twice or missed: the counters add up to the ledger's own attempt counts.
    total = sum(v for (n, _), v in samples.items() if n == "herald_delivery_attempts_total")
    assert total == ledger_attempts(stack) == expected_sent + changes + greylisted

    count = samples["herald_delivery_latency_seconds_count", ()]
    assert count == expected_sent
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (n, labels), v in samples.items()
        if n == "herald_delivery_latency_seconds_bucket"
    )
    assert buckets[-1] == (float("inf"), count)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))  # cumulative
    assert samples["herald_delivery_latency_seconds_sum", ()] > 0
    assert buckets[-2][1] > 0  # the mails fell in real buckets, not only +Inf

    jobs = {dict(labels)["outcome"]: v for (n, labels), v in samples.items() if n == "herald_jobs_total"}
    assert jobs["done"] >= changes and jobs["retry"] >= 1, jobs
    assert samples["herald_job_duration_seconds_count", ()] == sum(jobs.values())

    # The live picture, from the second generation's heartbeats and the queue.
    assert samples["herald_workers_alive", ()] == 2
    assert samples["herald_worker_slots", ()] == 2
    assert samples["herald_relay_up", ()] == 1
    assert samples["herald_queue_jobs", (("state", "ready"),)] == 0
    assert samples["herald_up", (("part", "queue"),)] == 1

    # Both generations did work: four worker processes started, each counted into the same totals.
    log = stack.log()
    assert len(set(re.findall(r"worker-\d started pid=(\d+)", log))) == 4
    assert stack.stop_workers(second) == 0
