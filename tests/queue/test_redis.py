"""What only the Redis backend has to survive: restarts, lost keys, a server that is down, Cluster slots."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.crc import key_slot

from herald.config import Settings
from herald.queue import Job, QueueError, QueueUnavailable, make_queue
from herald.queue.keys import JOB_FIELD, RedisKeys
from herald.queue.redis_backend import RedisQueue
from herald.queue.redis_scripts import SOURCES
from tests.queue.conftest import wait_until
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

LEASE = 0.5


@pytest.fixture
def queue(redis_settings: Settings) -> Iterator[RedisQueue]:
    made = RedisQueue(dataclasses.replace(redis_settings, lease_seconds=LEASE))
    yield made
    made.close()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    made = redis_server.client()
    yield made
    made.close()


def counts(queue: RedisQueue) -> tuple[int, int, int, int]:
    s = queue.stats()
    return s.depth, s.in_flight, s.delayed, s.dead


def blocked_readers(client: redis.Redis) -> int:
    return sum(
        c.get("cmd") in ("xread", "xreadgroup") and "b" in c.get("flags", "") for c in client.client_list()
    )


def test_jobs_survive_a_restart_with_appendonly(queue: RedisQueue, redis_server: RedisServer) -> None:
    jobs = [Job.new(1) for _ in range(4)]  # one changeset: one shard, first in, first out
    for job in jobs:
        queue.enqueue(job)
    in_flight = queue.claim("w", timeout=1)
    to_retry = queue.claim("w", timeout=1)
    to_kill = queue.claim("w", timeout=1)
    assert in_flight and to_retry and to_kill
    queue.retry(to_retry, 60, "later")
    queue.dead(to_kill, "no")
    assert counts(queue) == (1, 1, 1, 1)

    redis_server.restart()

    assert counts(queue) == (1, 1, 1, 1)  # the same client carries on over a fresh connection
    ready = queue.claim("w", timeout=0)
    assert ready is not None and ready.id == jobs[3].id
    # The in-flight job's lease kept running across the restart; its worker is gone, so it comes back.
    again = queue.claim("w2", timeout=5)
    assert again is not None and again.id == in_flight.id and again.attempts == 2
    assert [d.job_id for d in queue.dead_letters()] == [to_kill.id]


def test_a_redis_that_lost_everything_is_used_again_at_once(queue: RedisQueue, client: redis.Redis) -> None:
    queue.enqueue(Job.new(1))
    first = queue.claim("w", timeout=1)
    assert first is not None
    # What a restart without persistence leaves: no stream, no group, no scripts.
    client.delete(*queue.keys.all())
    client.script_flush()

    queue.ack(first)  # the job it finished is gone: nothing to do, no error
    job = Job.new(2)
    queue.enqueue(job)  # recreates the stream, without the consumer group
    got = queue.claim("w", timeout=1)
    assert got is not None and got.id == job.id
    queue.ack(got)
    assert counts(queue) == (0, 0, 0, 0)


def test_a_claimer_blocked_while_the_stream_is_deleted_still_gets_the_next_job(
    queue: RedisQueue, redis_settings: Settings, client: redis.Redis
) -> None:
    queue.ping()
    got: dict[str, object] = {}
    thread = threading.Thread(target=lambda: got.update(job=queue.claim("w", timeout=10)))
    thread.start()
    wait_until(lambda: blocked_readers(client), what="the claimer to block")
    client.delete(*(shard.stream for shard in queue.keys.by_index))
    job = Job.new(3)
    producer = RedisQueue(redis_settings)
    try:
        producer.enqueue(job)
    finally:
        producer.close()
    thread.join(timeout=5)
    assert isinstance(got.get("job"), Job) and got["job"].id == job.id


def test_a_server_that_is_down_raises_queue_unavailable(
    queue: RedisQueue, redis_server: RedisServer, client: redis.Redis
) -> None:
    queue.ping()
    outcome: dict[str, BaseException] = {}

    def blocked_claim() -> None:
        try:
            queue.claim("w", timeout=10)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=blocked_claim)
    thread.start()
    wait_until(lambda: blocked_readers(client), what="the claimer to block")
    redis_server.stop()
    try:
        thread.join(timeout=5)
        assert isinstance(outcome.get("error"), QueueUnavailable)  # a worker backs off; it does not hang

        started = time.monotonic()
        with pytest.raises(QueueUnavailable):
            queue.ping()
        with pytest.raises(QueueUnavailable):
            queue.enqueue(Job.new(1))
        with pytest.raises(QueueUnavailable):
            queue.claim("w", timeout=1)
        with pytest.raises(QueueUnavailable):
            queue.stats()
        assert time.monotonic() - started < 3, "a down server must fail fast"
    finally:
        redis_server.start()
    queue.ping()
    queue.enqueue(job := Job.new(2))
    claimed = queue.claim("w", timeout=1)
    assert claimed is not None and claimed.id == job.id


def test_wrong_password_is_queue_unavailable(redis_server: RedisServer, redis_namespace: str) -> None:
    url = redis_server.url.replace(redis_server.password, "not-the-password")
    queue = make_queue(Settings(queue_backend="redis", redis_url=url, redis_namespace=redis_namespace))
    try:
        with pytest.raises(QueueUnavailable) as info:
            queue.ping()
        assert "not-the-password" not in str(info.value)
    finally:
        queue.close()


def test_every_key_carries_the_namespace_hash_tag(
    queue: RedisQueue, client: redis.Redis, redis_namespace: str
) -> None:
    for n in (1, 2, 3):
        queue.enqueue(Job.new(n))
    a, b, c = (queue.claim("w", timeout=1) for _ in range(3))
    assert a and b and c
    queue.retry(a, 60, "later")
    queue.dead(b, "no")
    queue.extend(c)
    queue.stats()

    used = {key.decode() for key in client.scan_iter(match=f"*{redis_namespace}*")}
    assert used and used <= set(queue.keys.all())
    assert all(key.startswith(f"{{{redis_namespace}") for key in used)
    for shard in queue.keys.by_index:  # one slot per shard, so each script runs on one Cluster node
        assert len({key_slot(key.encode()) for key in shard.all()}) == 1
    slots = sorted(key_slot(shard.stream.encode()) for shard in queue.keys.by_index)
    width = 16384 / len(slots)
    assert [int(slot // width) for slot in slots] == list(range(len(slots)))  # spread over the slots


def test_one_shard_keeps_the_keys_of_herald_0_2(redis_namespace: str) -> None:
    keys = RedisKeys(redis_namespace, 1)
    assert keys.shard(0).stream == f"{{{redis_namespace}}}:stream"


def test_a_changeset_always_maps_to_the_same_shard() -> None:
    keys = RedisKeys("herald", 4)
    assert [keys.shard_for(n).index for n in range(1, 9)] == [keys.shard_for(n).index for n in range(1, 9)]
    assert {keys.shard_for(n).index for n in range(1, 200)} == {0, 1, 2, 3}
    assert keys.shard_for(42) == RedisKeys("herald", 4).shard_for(42)


@pytest.mark.parametrize("namespace", ["", "a{b", "a}b"])
def test_a_namespace_that_would_break_the_hash_tag_is_refused(namespace: str) -> None:
    with pytest.raises(QueueError, match="redis_namespace"):
        RedisKeys(namespace)


def test_an_entry_without_a_job_field_is_dead_lettered(queue: RedisQueue, client: redis.Redis) -> None:
    client.xadd(queue.keys.shard(2).stream, {b"something": b"else"})
    assert queue.claim("w", timeout=0) is None
    [letter] = queue.dead_letters()
    assert f"no {JOB_FIELD.decode()!r} field" in letter.reason
    assert letter.job_id.startswith("entry-")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_script_declares_the_keys_it_uses_in_its_header(name: str) -> None:
    source = SOURCES[name]
    lines = source.splitlines()
    header = [line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("--"))]]
    declared = {int(n) for line in header for n in re.findall(r"^-- KEYS\[(\d+)\]", line)}
    used = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", "\n".join(lines[len(header) :]))}
    assert used == declared == set(range(1, len(declared) + 1))
    # Key names are never built inside a script (that would break Redis Cluster routing).
    assert not re.search(r"KEYS\[\d+\]\s*\.\.", source)


def test_release_hands_back_more_than_one_batch_and_deletes_the_consumer(
    queue: RedisQueue, client: redis.Redis
) -> None:
    jobs = [Job.new(n) for n in range(1, 501)]  # more than one batch in some shard
    for job in jobs:
        queue.enqueue(job)
    held = queue.claim_batch("dying", 500, timeout=1)
    assert max(sum(1 for j in held if j.receipt.startswith(f"{n}/")) for n in range(4)) > 100
    assert len(held) == 500
    streams = [shard.stream for shard in queue.keys.by_index]
    assert all(
        [c["name"] for c in client.xinfo_consumers(stream, "herald-workers")] == [b"dying"]
        for stream in streams
    )

    assert queue.release("dying") == 500
    assert all(client.xinfo_consumers(stream, "herald-workers") == [] for stream in streams)
    again = queue.claim_batch("next", 1000, timeout=0)
    assert sorted(j.id for j in again) == sorted(j.id for j in jobs)
    assert {j.attempts for j in again} == {2}


def test_a_consumer_that_acked_before_its_release_has_nothing_handed_back(queue: RedisQueue) -> None:
    queue.enqueue(Job.new(1))
    job = queue.claim("w", timeout=1)
    assert job is not None
    queue.ack(job)
    assert queue.release("w") == 0
    assert counts(queue) == (0, 0, 0, 0)


def test_no_shard_starves_behind_a_busy_one(queue: RedisQueue) -> None:
    keys = queue.keys
    busy = next(n for n in range(1, 100) if keys.shard_for(n).index == 0)
    quiet = next(n for n in range(1, 100) if keys.shard_for(n).index == 2)
    for _ in range(50):
        queue.enqueue(Job.new(busy))
    lonely = Job.new(quiet)
    queue.enqueue(lonely)
    claimed = [queue.claim("w", timeout=1) for _ in range(len(keys.by_index))]
    assert lonely.id in {job.id for job in claimed if job}  # each claim starts one shard further on


def test_a_claim_that_finds_nothing_blocks_on_the_doorbell_and_wakes_on_a_push_to_any_shard(
    redis_settings: Settings, client: redis.Redis
) -> None:
    # A long lease: the claimer's own look at the shards comes only every second, so a wake-up within
    # half a second is the doorbell's.
    queue = RedisQueue(dataclasses.replace(redis_settings, lease_seconds=30))
    queue.ping()
    for shard in range(4):
        got: dict[str, object] = {}
        thread = threading.Thread(target=lambda got=got: got.update(job=queue.claim("w", timeout=10)))
        thread.start()
        wait_until(lambda: blocked_readers(client), what="the claimer to block")
        changeset = next(n for n in range(1, 100) if queue.keys.shard_for(n).index == shard)
        job = Job.new(changeset)
        producer = RedisQueue(redis_settings)
        try:
            started = time.monotonic()
            producer.enqueue(job)
        finally:
            producer.close()
        thread.join(timeout=5)
        assert isinstance(got.get("job"), Job) and got["job"].id == job.id  # type: ignore[attr-defined]
        assert time.monotonic() - started < 0.5  # woken by the push, not by the next look a second later
    queue.close()
