"""``herald queue stats|dead|retry|purge`` through the real command line parser, on a real redis-server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from herald.cli.main import RET_ERROR, _register, cli
from herald.cli.workers import RET_QUEUE_UNAVAILABLE
from herald.config import load_settings
from herald.queue import Job, make_queue
from herald.queue.keys import JOB_FIELD, RedisKeys
from tests.support.redis_server import RedisServer
from tests.support.services import free_port

_register()


@pytest.fixture
def env(tmp_path: Path, redis_server: RedisServer, redis_namespace: str) -> dict[str, str]:
    return {
        "HERALD_CONFIG": "",
        "HERALD_DATA_DIR": str(tmp_path / "var"),
        "HERALD_REDIS_URL": redis_server.url,
        "HERALD_REDIS_NAMESPACE": redis_namespace,
    }


def run(env: dict[str, str], *args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


def plant(env: dict[str, str], redis_server: RedisServer) -> tuple[str, str]:
    """One job dead-lettered by a worker, one malformed payload; returns (job id, malformed reason)."""
    settings = load_settings(env=env)
    with make_queue(settings) as queue:
        queue.enqueue(Job.new(42))
        job = queue.claim("test", 1.0)
        assert job is not None
        queue.dead(job, "gave up: 451 try later")
        client = redis_server.client()
        client.xadd(
            RedisKeys(settings.redis_namespace, settings.queue_shards).shard(0).stream, {JOB_FIELD: b"[1, 2]"}
        )
        client.close()
        assert queue.claim("test", 0) is None  # the garbage is dead-lettered while claiming
    return job.id, "malformed job"


def test_stats_as_a_table_and_as_json(env, redis_server):
    plant(env, redis_server)
    table = run(env, "queue", "stats")
    assert table.exit_code == 0, table.output
    assert "ready" in table.output and "dead" in table.output
    data = json.loads(run(env, "queue", "stats", "--json").stdout)
    assert data.pop("target")["queue"].startswith("redis")
    assert data == {
        "backend": "redis",
        "depth": 0,
        "in_flight": 0,
        "delayed": 0,
        "dead": 2,
        "oldest_age_seconds": 0.0,
    }


def test_dead_lists_each_letter_with_its_reason(env, redis_server):
    job_id, _ = plant(env, redis_server)
    letters = json.loads(run(env, "queue", "dead", "--json").stdout)
    first = letters[0]
    assert (first["job_id"], first["changeset_id"], first["reason"]) == (job_id, 42, "gave up: 451 try later")
    assert letters[1]["changeset_id"] is None and letters[1]["reason"].startswith("malformed job")
    table = run(env, "queue", "dead")
    assert table.exit_code == 0 and job_id in table.output


def test_retry_one_job_then_all_then_purge(env, redis_server):
    job_id, _ = plant(env, redis_server)
    assert run(env, "queue", "retry").exit_code == 2  # a usage error: JOB_ID or --all
    assert run(env, "queue", "retry", job_id, "--all").exit_code == 2
    result = run(env, "queue", "retry", job_id)
    assert result.exit_code == 0 and "requeued 1 job(s)" in result.output
    with make_queue(load_settings(env=env)) as queue:
        job = queue.claim("test", 1.0)
    assert job is not None and (job.id, job.changeset_id, job.attempts) == (job_id, 42, 1)
    missing = run(env, "queue", "retry", "f" * 32)
    assert missing.exit_code == RET_ERROR and "no dead letter" in missing.output
    assert "requeued 0 job(s)" in run(env, "queue", "retry", "--all").output  # the malformed one stays
    purged = run(env, "queue", "purge", input="y\n")
    assert purged.exit_code == 0 and "purged 1 dead letter(s)" in purged.output
    assert json.loads(run(env, "queue", "stats", "--json").stdout)["dead"] == 0


def test_an_unreachable_queue_exits_with_its_own_code(env):
    env = {**env, "HERALD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = run(env, "queue", "stats")
    assert result.exit_code == RET_QUEUE_UNAVAILABLE
    assert "queue unavailable" in result.output
