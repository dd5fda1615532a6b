"""What only the SQL backend has: SQLite settings, the schema, PostgreSQL's listener, unreachable servers."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import create_engine, event, insert, text

from herald.config import Settings
from herald.queue import Job, QueueError, QueueUnavailable, make_queue
from herald.queue.sql_backend import SqlQueue
from herald.queue.sql_engine import SQLITE_BUSY_TIMEOUT_MS, make_engine
from herald.queue.sql_schema import READY, metadata, queue_table
from herald.queue.sql_wake import CHANNEL
from tests.queue.conftest import wait_until
from tests.support.services import free_port


def sql_queue(url: str) -> SqlQueue:
    queue = make_queue(Settings(queue_backend="sql", database_url=url))
    assert isinstance(queue, SqlQueue)
    return queue


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_url: str) -> None:
    with sql_queue(sqlite_url) as queue, queue.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS


def test_an_idle_sqlite_claimer_never_takes_the_write_lock(sqlite_url: str) -> None:
    with sql_queue(sqlite_url) as queue:
        queue.create_schema()
        begins: list[str] = []

        def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            if statement.startswith("BEGIN"):
                begins.append(statement)

        event.listen(queue.engine, "before_cursor_execute", record)
        assert queue.claim("w", timeout=0.2) is None
        assert "BEGIN DEFERRED" in begins and "BEGIN IMMEDIATE" not in begins
        queue.enqueue(Job.new(1))
        assert queue.claim("w", timeout=0) is not None
        assert "BEGIN IMMEDIATE" in begins


def test_the_schema_is_one_table_on_its_own_metadata_and_creating_it_twice_is_fine(sqlite_url: str) -> None:
    assert list(metadata.tables) == ["herald_queue"]
    with sql_queue(sqlite_url) as queue:
        queue.create_schema()
        queue.create_schema()
        queue.enqueue(Job.new(1))
        assert queue.stats().depth == 1


def test_the_table_is_created_on_first_use(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'new' / 'dir' / 'queue.db'}"
    with sql_queue(url) as queue:
        queue.enqueue(Job.new(1))
        assert queue.claim("w", timeout=0) is not None


def test_an_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(QueueError, match="in-memory"):
        make_engine("sqlite://")


def test_plain_postgresql_urls_use_psycopg_3() -> None:
    assert make_engine("postgresql://u@127.0.0.1/x").dialect.driver == "psycopg"


def test_a_row_whose_payload_does_not_match_it_is_dead_lettered(sqlite_url: str) -> None:
    with sql_queue(sqlite_url) as queue:
        queue.create_schema()
        job = Job.new(4)
        with queue.engine.begin() as conn:
            conn.execute(
                insert(queue_table).values(
                    job_id=uuid.uuid4().hex,
                    changeset_id=4,
                    payload=job.to_json(),
                    state=READY,
                    available_at=time.time(),
                    enqueued_at=time.time(),
                )
            )
        assert queue.claim("w", timeout=0) is None
        [letter] = queue.dead_letters()
        assert "differs from the row's job_id" in letter.reason


@pytest.mark.postgres
def test_an_unreachable_database_raises_queue_unavailable() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    with sql_queue(url) as queue:
        started = time.monotonic()
        with pytest.raises(QueueUnavailable):
            queue.ping()
        with pytest.raises(QueueUnavailable):
            queue.enqueue(Job.new(1))
        with pytest.raises(QueueUnavailable):
            queue.claim("w", timeout=1)
        assert time.monotonic() - started < 5


@pytest.mark.postgres
def test_claims_skip_rows_locked_by_another_claimer(pg_url: str) -> None:
    with sql_queue(pg_url) as queue:
        first, second = Job.new(1), Job.new(2)
        queue.enqueue(first)
        queue.enqueue(second)
        engine = create_engine(pg_url)
        try:
            with engine.begin() as conn:
                # Another claimer holds the first row; this one must not wait for it.
                conn.execute(
                    text("SELECT id FROM herald_queue WHERE job_id = :j FOR UPDATE"), {"j": first.id}
                )
                started = time.monotonic()
                got = queue.claim("w", timeout=0)
                assert time.monotonic() - started < 1
                assert got is not None and got.id == second.id
        finally:
            engine.dispose()


@pytest.mark.postgres
def test_the_listener_reconnects_after_losing_its_connection(pg_url: str) -> None:
    consumer, producer = sql_queue(pg_url), sql_queue(pg_url)
    admin = create_engine(pg_url)
    try:
        producer.create_schema()
        got: dict[str, object] = {}
        thread = threading.Thread(target=lambda: got.update(job=consumer.claim("w", timeout=20)))
        thread.start()
        listeners = text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = :q"
        ).bindparams(q=f"LISTEN {CHANNEL}")

        def listener_pid() -> int | None:
            # A fresh transaction each time: pg_stat_activity is a snapshot taken once per transaction.
            with admin.connect() as conn:
                return conn.execute(listeners).scalar()

        pid = wait_until(listener_pid, what="the listener")
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        wait_until(lambda: listener_pid() not in (None, pid), what="the listener to reconnect")
        job = Job.new(8)
        producer.enqueue(job)
        thread.join(timeout=10)
        assert isinstance(got.get("job"), Job) and got["job"].id == job.id
    finally:
        consumer.close()
        producer.close()
        admin.dispose()


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_table_from_herald_0_1_gets_its_fence_column_and_keeps_its_jobs(
    db: str, request: pytest.FixtureRequest, sqlite_url: str
) -> None:
    url = sqlite_url if db == "sqlite" else request.getfixturevalue("pg_url")
    job = Job.new(8)
    engine = make_engine(url)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:  # what herald 0.1 created
            conn.execute(text("ALTER TABLE herald_queue DROP COLUMN fence"))
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO herald_queue (job_id, changeset_id, payload, state, available_at, attempts,"
                    " enqueued_at) VALUES (:id, 8, :payload, 'ready', :now, 0, :now)"
                ),
                {"id": job.id, "payload": job.to_json(), "now": time.time()},
            )
    finally:
        engine.dispose()
    with sql_queue(url) as queue, sql_queue(url) as other:
        claimed = queue.claim("w", timeout=0)  # the first use adds the column
        assert claimed is not None and claimed.id == job.id and claimed.receipt.endswith(":1")
        queue.retry(claimed, 0, "451")
        again = other.claim("w", timeout=0)
        assert again is not None and again.attempts == 1 and again.receipt.endswith(":2")
        queue.ack(claimed)  # the first claim's receipt no longer holds, though attempts is 1 again
        assert queue.stats().in_flight == 1
        other.ack(again)
        assert queue.stats().in_flight == 0
