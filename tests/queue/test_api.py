"""The public surface of herald.queue: what it exports, which backend it builds, its error tree."""

from __future__ import annotations

import pytest

import herald.queue
from herald.config import Settings
from herald.queue import LeaseLost, MalformedJob, QueueError, QueueUnavailable, make_queue
from herald.queue.redis_backend import RedisQueue
from herald.queue.sql_backend import SqlQueue


def test_exported_members() -> None:
    assert sorted(herald.queue.__all__) == [
        "DeadLetter",
        "Job",
        "LeaseLost",
        "MalformedJob",
        "Queue",
        "QueueError",
        "QueueStats",
        "QueueUnavailable",
        "decode_job",
        "make_queue",
    ]


def test_make_queue_follows_queue_backend(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sql = make_queue(Settings(queue_backend="sql", database_url=f"sqlite:///{tmp_path / 'q.db'}"))
    redis_queue = make_queue(Settings(queue_backend="redis", redis_url="redis://127.0.0.1:1/0"))
    guessed = make_queue(Settings(redis_server="127.0.0.1"))
    try:
        assert isinstance(sql, SqlQueue)
        assert isinstance(redis_queue, RedisQueue)
        assert isinstance(guessed, RedisQueue)
    finally:
        for queue in (sql, redis_queue, guessed):
            queue.close()


def test_make_queue_refuses_what_it_cannot_build() -> None:
    with pytest.raises(QueueError, match="queue_backend"):
        make_queue(Settings(queue_backend="kafka"))
    with pytest.raises(QueueError, match="redis_server, redis_url or redis_sentinels"):
        make_queue(Settings(queue_backend="redis"))


def test_error_tree_shows_what_is_transient() -> None:
    assert issubclass(QueueUnavailable, QueueError) and issubclass(QueueUnavailable, ConnectionError)
    assert QueueUnavailable.transient and not QueueError.transient
    assert issubclass(MalformedJob, QueueError) and issubclass(MalformedJob, ValueError)
    assert issubclass(LeaseLost, QueueError)
    assert MalformedJob("bad").reason == "bad"
