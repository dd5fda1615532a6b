"""One ``backend`` fixture, parametrized over Redis, SQLite and PostgreSQL, for the shared contract suite.

A backend makes queue instances on one shared store (each instance stands for a worker process), can put
raw bytes straight into the store (to plant garbage that ``enqueue`` would never write), and can tell when
a claimer is really blocked inside the server rather than about to be.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import event, insert

from herald.config import Settings
from herald.queue import Queue, make_queue
from herald.queue.keys import JOB_FIELD, RedisKeys
from herald.queue.sql_backend import SqlQueue
from herald.queue.sql_schema import READY, queue_table
from tests.support.redis_ha import ClusterSet, SentinelSet
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until as _wait_until

WAIT_SECONDS = 5.0
wait_until = functools.partial(_wait_until, timeout=WAIT_SECONDS)


@dataclass
class Backend:
    """A store shared by the queues it makes; see the module docstring."""

    name: str
    settings: Settings
    insert_raw: Callable[[bytes], None]
    _watch_blocked: Callable[[Queue], Callable[[], bool]]
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def shards(self) -> int:
        """How many shards the queue has (1 for SQL): ordering is first in, first out per shard."""
        return self.settings.queue_shards if self.settings.queue_backend == "redis" else 1

    def make(self, **overrides: Any) -> Queue:
        """A new queue instance on the shared store; ``overrides`` replace settings (lease, attempts)."""
        settings = dataclasses.replace(self.settings, **overrides)
        queue = make_queue(settings)
        self.cleanups.append(queue.close)
        return queue

    def watch_blocked(self, queue: Queue) -> Callable[[], bool]:
        """Call before starting a claimer on ``queue``; the result tells whether it is now waiting."""
        return self._watch_blocked(queue)

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()


def blocked_on_redis(clients: list[redis.Redis]) -> bool:
    """Whether some client of these servers is blocked in a stream read (a claimer waiting for work)."""
    return any(
        c.get("cmd") in ("xread", "xreadgroup") and "b" in c.get("flags", "")
        for client in clients
        for c in client.client_list()
    )


def redis_backend(name: str, settings: Settings, clients: list[redis.Redis], data: redis.Redis) -> Backend:
    """A backend on a Redis deployment: ``clients`` reach every master, ``data`` routes keys (it may be a
    cluster client)."""
    keys = RedisKeys(settings.redis_namespace, settings.queue_shards)

    def insert_raw(raw: bytes) -> None:
        data.xadd(keys.shard(0).stream, {JOB_FIELD: raw})

    def watch_blocked(_queue: Queue) -> Callable[[], bool]:
        return lambda: blocked_on_redis(clients)

    return Backend(name, settings, insert_raw, watch_blocked)


def _redis_backend(server: RedisServer, namespace: str, shards: int) -> Backend:
    settings = Settings(
        queue_backend="redis", redis_url=server.url, redis_namespace=namespace, queue_shards=shards
    )
    client = server.client()
    backend = redis_backend(f"redis-{shards}", settings, [client], client)
    backend.cleanups.append(client.close)
    return backend


def _sentinel_backend(deployment: SentinelSet) -> Backend:
    settings = deployment.settings(f"t-{uuid.uuid4().hex[:12]}")
    client = deployment.client(deployment.master())
    backend = redis_backend("sentinel", settings, [client], client)
    backend.cleanups.append(client.close)
    return backend


def _cluster_backend(deployment: ClusterSet) -> Backend:
    settings = Settings(
        queue_backend="redis",
        redis_url=deployment.url(),
        redis_cluster=True,
        redis_namespace=f"t-{uuid.uuid4().hex[:12]}",
    )
    masters = [
        deployment.client(node)
        for node in deployment.nodes
        if any(i["port"] == node.port and i["master"] for i in deployment.topology().values())
    ]
    data = deployment.cluster_client()
    backend = redis_backend("cluster", settings, masters, data)  # type: ignore[arg-type]
    backend.cleanups.extend([data.close, *(c.close for c in masters)])
    return backend


def _sql_backend(name: str, url: str) -> Backend:
    settings = Settings(queue_backend="sql", database_url=url)
    schema_queue = SqlQueue(settings)
    schema_queue.create_schema()

    def insert_raw(raw: bytes) -> None:
        now = time.time()
        with schema_queue.engine.begin() as conn:
            conn.execute(
                insert(queue_table).values(
                    job_id=uuid.uuid4().hex,
                    changeset_id=None,
                    payload=raw.decode("utf-8", "replace"),
                    state=READY,
                    available_at=now,
                    attempts=0,
                    enqueued_at=now,
                )
            )

    def watch_blocked(queue: Queue) -> Callable[[], bool]:
        # A claimer that found nothing asks when something will be due, then waits: that query is the sign.
        asked = threading.Event()

        def on_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if "min(CASE" in statement:
                asked.set()

        assert isinstance(queue, SqlQueue)
        event.listen(queue.engine, "before_cursor_execute", on_execute)
        return asked.is_set

    backend = Backend(name, settings, insert_raw, watch_blocked)
    backend.cleanups.append(schema_queue.close)
    return backend


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-1", marks=pytest.mark.redis),
        pytest.param("sentinel", marks=[pytest.mark.redis, pytest.mark.redis_ha]),
        pytest.param("cluster", marks=[pytest.mark.redis, pytest.mark.redis_ha]),
        pytest.param("sqlite"),
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each contract test runs once per backend, on a store of its own."""
    if request.param == "sentinel":
        made = _sentinel_backend(request.getfixturevalue("shared_sentinel_set"))
    elif request.param == "cluster":
        made = _cluster_backend(request.getfixturevalue("shared_cluster_set"))
    elif request.param.startswith("redis"):
        server = request.getfixturevalue("redis_server")
        shards = 1 if request.param == "redis-1" else 4
        made = _redis_backend(server, request.getfixturevalue("redis_namespace"), shards)
    elif request.param == "sqlite":
        made = _sql_backend("sqlite", f"sqlite:///{tmp_path / 'queue.db'}")
    else:
        made = _sql_backend("postgresql", request.getfixturevalue("pg_url"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def redis_settings(redis_server: RedisServer, redis_namespace: str) -> Settings:
    return Settings(queue_backend="redis", redis_url=redis_server.url, redis_namespace=redis_namespace)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'queue.db'}"
