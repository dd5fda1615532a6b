"""Issue 9, defect 1: whatever is in the queue's storage, a claim neither fails nor loops on it.

Garbage is written straight into the real store (the redis client, SQL statements that bypass herald), next
to one good job. Every claim must still return the good job, dead-letter what is not a job with the reason,
and raise nothing but QueueUnavailable; ``stats`` must never report an age that cannot be real.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from herald.config import Settings
from herald.queue import Job, Queue
from herald.queue.base import EARLIEST_PLAUSIBLE_TIME
from herald.queue.keys import JOB_FIELD
from herald.queue.redis_backend import RedisQueue
from herald.queue.sql_backend import SqlQueue
from tests.support.redis_server import RedisServer

#: Examples per backend: short in CI, more when asked (HERALD_FUZZ_EXAMPLES=500).
EXAMPLES = int(os.environ.get("HERALD_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def claim_everything(queue: Queue) -> list[Job]:
    """Claim until nothing is left; a queue that looped on garbage would never get here."""
    claimed: list[Job] = []
    for _ in range(20):
        batch = queue.claim_batch("w", 10, timeout=0)
        if not batch:
            return claimed
        claimed.extend(batch)
    pytest.fail("claims kept returning jobs: the queue is looping on something")


def assert_sane(queue: Queue) -> None:
    stats = queue.stats()
    assert 0.0 <= stats.oldest_age_seconds <= time.time() - EARLIEST_PLAUSIBLE_TIME
    for letter in queue.dead_letters(limit=1000):
        assert isinstance(letter.job_id, str) and isinstance(letter.reason, str)
        assert isinstance(letter.attempts, int) and isinstance(letter.died_at, float)


# --- SQL -------------------------------------------------------------------------------------------------

_COLUMNS = [
    *("job_id", "changeset_id", "payload", "state", "available_at", "lease_until", "attempts", "worker"),
    *("last_error", "enqueued_at", "died_at", "fence"),
]
_INSERT = text(
    f"INSERT INTO herald_queue ({', '.join(_COLUMNS)}) VALUES ({', '.join(':' + c for c in _COLUMNS)})"
)


def good_row(**changes: Any) -> dict[str, Any]:
    job = Job.new(11)
    now = time.time()
    row = dict(
        job_id=job.id,
        changeset_id=job.changeset_id,
        payload=job.to_json(),
        state="ready",
        available_at=now,
        lease_until=None,
        attempts=0,
        worker=None,
        last_error=None,
        enqueued_at=now,
        died_at=None,
        fence=0,
    )
    row.update(changes)
    return row


def write_row(engine: Engine, row: dict[str, Any]) -> bool:
    """Write ``row`` as it is; False when the database itself refuses it (types, constraints)."""
    try:
        with engine.begin() as conn:
            conn.execute(_INSERT, row)
    except Exception:
        return False
    return True


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sql_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlQueue]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'queue.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    queue = SqlQueue(Settings(queue_backend="sql", database_url=url, job_max_attempts=3))
    queue.create_schema()
    yield queue
    queue.close()


_SQLITE_ONLY = {
    "attempts": ("abc", 10**12, 2.5, b"\x00\xff"),
    "available_at": ("soon", b"\xff"),
    "enqueued_at": ("yesterday",),
    "fence": ("x",),
}


def garbage_rows(dialect: str) -> list[tuple[dict[str, Any], str]]:
    """Rows with a valid payload and one field that herald never writes, and the word the reason names."""
    far = 1e300
    rows = [
        (good_row(attempts=-5), "attempts"),
        (good_row(attempts=2**31 - 1), "attempts"),
        (good_row(enqueued_at=far), "enqueued_at"),
        (good_row(available_at=far), "available_at"),
        (good_row(state="claimed", lease_until=None, worker="w0"), "lease_until"),
        (good_row(state="claimed", lease_until=far, worker="w0"), "lease_until"),
        (good_row(fence=-1), "fence"),
    ]
    bad_time = Job.new(12)
    payload = json.loads(bad_time.to_json()) | {"enqueued_at": 1e300}
    rows.append((good_row(job_id=bad_time.id, changeset_id=12, payload=json.dumps(payload)), "enqueued_at"))
    if dialect == "sqlite":
        rows += [(good_row(**{column: value}), column) for column, vs in _SQLITE_ONLY.items() for value in vs]
        rows.append((good_row(state="claimed", lease_until="later", worker="w0"), "lease_until"))
    else:
        rows += [
            (good_row(available_at=float("nan")), "available_at"),
            (good_row(available_at=float("inf")), "available_at"),
            (good_row(enqueued_at=float("-inf")), "enqueued_at"),
            (good_row(state="claimed", lease_until=float("nan"), worker="w0"), "lease_until"),
        ]
    return rows


def test_sql_rows_with_garbage_fields_are_dead_lettered_and_the_good_job_flows(sql_queue: SqlQueue) -> None:
    rows = garbage_rows(sql_queue.engine.dialect.name)
    for row, _ in rows:
        assert write_row(sql_queue.engine, row), row
    # Also stats must not report a 57-year-old job because of a 0 somewhere (a valid, delayed job).
    assert write_row(sql_queue.engine, good_row(enqueued_at=0.0, available_at=time.time() + 3600))
    good = Job.new(77)
    sql_queue.enqueue(good)

    assert [j.id for j in claim_everything(sql_queue)] == [good.id]
    letters = {letter.job_id: letter for letter in sql_queue.dead_letters(limit=1000)}
    for row, column in rows:
        assert column in letters[row["job_id"]].reason, (row, letters[row["job_id"]].reason)
    stats = sql_queue.stats()
    assert (stats.in_flight, stats.dead, stats.delayed) == (1, len(rows), 1)
    assert stats.oldest_age_seconds < 60
    assert_sane(sql_queue)
    # A dead letter whose counters were garbage can be requeued and then runs like any other job.
    assert sql_queue.requeue_dead(rows[0][0]["job_id"]) == 1
    again = sql_queue.claim("w", timeout=0)
    assert again is not None and again.id == rows[0][0]["job_id"] and again.attempts == 1


_anything = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=30),
    st.binary(max_size=30),
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_JOB_KEYS = ("v", "id", "changeset_id", "enqueued_at")


@st.composite
def job_payloads(draw: st.DrawFn) -> bytes:
    """A job's JSON with some of its fields (``v``, ``id``, ``changeset_id``, ``enqueued_at``) replaced by
    any JSON value or left out, extra keys, or not an object at all: every field of the payload."""
    job = json.loads(Job.new(draw(st.integers(min_value=1, max_value=2**63 - 1))).to_json())
    for key in draw(st.sets(st.sampled_from(_JOB_KEYS), max_size=2)):
        if draw(st.booleans()):
            del job[key]
        else:
            job[key] = draw(_json_values)
    job |= draw(st.dictionaries(st.text(max_size=8), _json_values, max_size=2))
    document: Any = job if draw(st.integers(0, 9)) else draw(_json_values)
    return json.dumps(document, allow_nan=True).encode()


@st.composite
def sql_rows(draw: st.DrawFn) -> dict[str, Any]:
    """A row where any field may be anything, usually around a valid job so deeper checks are reached."""
    row = good_row(state=draw(st.sampled_from(["ready", "claimed", "dead"])))
    for column in draw(st.sets(st.sampled_from(_COLUMNS), max_size=4)):
        row[column] = draw(_anything)
    if draw(st.booleans()):
        row["payload"] = draw(job_payloads()).decode()
    return row


@FUZZ
@given(rows=st.lists(sql_rows(), min_size=1, max_size=4))
def test_fuzz_sql_storage(sql_queue: SqlQueue, rows: list[dict[str, Any]]) -> None:
    with sql_queue.engine.begin() as conn:
        conn.execute(text("DELETE FROM herald_queue"))
    for row in rows:
        write_row(sql_queue.engine, row)
    good = Job.new(99)
    sql_queue.enqueue(good)
    queue = SqlQueue(Settings(queue_backend="sql"), engine=sql_queue.engine)  # a fresh claimer: it sweeps
    try:
        assert good.id in {j.id for j in claim_everything(queue)}
        assert_sane(queue)
    finally:
        queue.close()


# --- Redis -----------------------------------------------------------------------------------------------


@pytest.fixture
def redis_queue(redis_server: RedisServer, redis_namespace: str) -> Iterator[RedisQueue]:
    queue = RedisQueue(
        Settings(queue_backend="redis", redis_url=redis_server.url, redis_namespace=redis_namespace)
    )
    yield queue
    queue.close()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    made = redis_server.client()
    yield made
    made.close()


@pytest.mark.redis
def test_redis_garbage_is_dead_lettered_and_the_good_job_flows(
    redis_queue: RedisQueue, client: redis.Redis
) -> None:
    shards = redis_queue.keys.by_index  # garbage in every shard: each is read, judged and cleaned alike
    corrupt, huge_time = Job.new(1), Job.new(2)
    redis_queue.enqueue(corrupt)
    client.hset(redis_queue.keys.shard_for(1).attempts, corrupt.id, b"not a number")  # HINCRBY would fail
    payload = json.loads(huge_time.to_json()) | {"enqueued_at": 1e300}
    client.xadd(shards[0].stream, {JOB_FIELD: json.dumps(payload).encode()})
    client.xadd(shards[1].stream, {b"\xff\xfe": b"\x80", b"other": b"x"})  # no job field, not UTF-8
    client.xadd(shards[2].stream, {JOB_FIELD: b"\xff\xfe not utf-8"})
    delayed_job = Job.new(3)
    client.zadd(shards[3].delayed, {b"\x00garbage": 0, delayed_job.to_json(): float("inf")})
    client.zadd(shards[1].live, {b"ancient": 0, b"future": 1e300})  # once reported as a job 57 years old
    good = Job.new(77)
    redis_queue.enqueue(good)

    claimed = claim_everything(redis_queue)
    assert sorted(j.id for j in claimed) == sorted([good.id, delayed_job.id])
    reasons = {letter.job_id: letter.reason for letter in redis_queue.dead_letters()}
    assert "corrupt attempt counter" in reasons[corrupt.id] and "not a number" in reasons[corrupt.id]
    assert sum("enqueued_at" in r for r in reasons.values()) == 1
    assert sum("not UTF-8" in r for r in reasons.values()) == 1
    assert sum("no 'job' field" in r for r in reasons.values()) == 1
    assert sum("not JSON" in r or "not UTF-8" in r for r in reasons.values()) == 2  # the delayed garbage
    stats = redis_queue.stats()
    assert stats.oldest_age_seconds < 60
    assert_sane(redis_queue)


@pytest.mark.redis
def test_redis_garbage_dead_letter_records_are_listed_not_raised_on(
    redis_queue: RedisQueue, client: redis.Redis
) -> None:
    k = redis_queue.keys.shard(3)
    client.hset(k.dead, b"x", b"\xffnot json")
    client.zadd(k.dead_index, {b"x": 1})
    [letter] = redis_queue.dead_letters()
    assert letter.job_id == "x" and "unreadable" in letter.reason
    assert redis_queue.requeue_dead() == 0
    assert redis_queue.purge_dead() == 1


_bytes = st.binary(max_size=40)
_scores = st.floats(allow_nan=False)


@st.composite
def redis_garbage(draw: st.DrawFn) -> dict[str, Any]:
    some_job = Job.new(draw(st.integers(min_value=1, max_value=2**63 - 1)))
    payloads = st.one_of(_bytes, st.just(some_job.to_json().encode()), job_payloads())
    ids = st.one_of(_bytes, st.just(some_job.id.encode()))
    return {
        "entries": draw(
            st.lists(
                st.dictionaries(st.one_of(_bytes, st.just(JOB_FIELD)), payloads, min_size=1, max_size=3),
                max_size=3,
            )
        ),
        "attempts": draw(st.dictionaries(ids, _bytes, max_size=3)),
        "errors": draw(st.dictionaries(ids, _bytes, max_size=2)),
        "live": draw(st.dictionaries(ids, _scores, max_size=3)),
        "delayed": draw(st.dictionaries(payloads, _scores, max_size=3)),
        "dead": draw(st.dictionaries(ids, _bytes, max_size=2)),
        "dead_index": draw(st.dictionaries(ids, _scores, max_size=2)),
    }


@pytest.mark.redis
@FUZZ
@given(garbage=redis_garbage())
def test_fuzz_redis_storage(redis_server: RedisServer, client: redis.Redis, garbage: dict[str, Any]) -> None:
    namespace = f"fuzz-{uuid.uuid4().hex}"
    queue = RedisQueue(
        Settings(queue_backend="redis", redis_url=redis_server.url, redis_namespace=namespace, queue_shards=2)
    )
    keys = queue.keys
    try:
        queue.ping()
        for n, fields in enumerate(garbage["entries"]):
            client.xadd(keys.shard(n % 2).stream, fields)
        # The good job's shard gets the counters and sets: where a job id would meet them.
        good = Job.new(99)
        target = keys.shard_for(good.changeset_id)
        for name in ("attempts", "errors", "dead"):
            if garbage[name]:
                client.hset(getattr(target, name), mapping=garbage[name])
        for name in ("live", "delayed", "dead_index"):
            if garbage[name]:
                client.zadd(getattr(target, name), garbage[name])
        queue.enqueue(good)
        assert good.id in {j.id for j in claim_everything(queue)}
        assert_sane(queue)
    finally:
        queue.close()
        client.delete(*keys.all())
