"""``herald check``, ``queue`` and ``doctor`` say which configuration and which queue they look at."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.helpers import invoke


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "herald.toml"
    path.write_text(text)
    return path


def test_without_any_config_check_says_so(tmp_path):
    invoke(["db", "upgrade"], tmp_path / "var")
    result = invoke(["check"], tmp_path / "var")

    lines = result.stdout.splitlines()
    assert lines[0].startswith("HERALD ")  # Nagios reads the first line: still the verdict
    assert (
        "config: none (built-in defaults; pass --config FILE or set HERALD_CONFIG), "
        "overridden by HERALD_DATA_DIR"
    ) in lines
    assert f"queue: sql in sqlite:///{tmp_path / 'var' / 'herald.db'}" in lines
    assert not [line for line in lines if line.startswith("WARNING: async")]


def test_config_from_the_environment_is_named(tmp_path):
    config = _config(tmp_path, "nb_backend_workers = 1\n")
    result = invoke(["doctor"], tmp_path / "var", HERALD_CONFIG=str(config))

    first = result.stdout.splitlines()[0]
    assert first == f"config: {config} (from HERALD_CONFIG), overridden by HERALD_DATA_DIR"


def test_async_without_redis_warns_that_the_sql_queue_is_used(tmp_path):
    config = _config(tmp_path, 'async_emails = "all"\n')
    result = invoke(["queue", "stats", "--config", str(config)], tmp_path / "var")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        f"config: {config} (from --config), overridden by HERALD_DATA_DIR",
        f"queue: sql in sqlite:///{tmp_path / 'var' / 'herald.db'}",
        f"WARNING: async_emails = all with no Redis configured: the SQL queue in "
        f"sqlite:///{tmp_path / 'var' / 'herald.db'} is used (set redis_server to use Redis)",
    ]


def test_check_json_stays_pure_json_and_names_the_target_on_stderr(tmp_path):
    config = _config(tmp_path, 'async_emails = "1"\n')
    invoke(["db", "upgrade", "--config", str(config)], tmp_path / "var")
    result = invoke(["check", "--json", "--config", str(config)], tmp_path / "var")

    assert "status" in json.loads(result.stdout)
    assert f"config: {config} (from --config)" in result.stderr
    assert "WARNING: async_emails = 1 with no Redis configured" in result.stderr


@pytest.mark.redis
def test_redis_configured_but_async_off_warns(tmp_path, redis_server, redis_namespace):
    config = _config(
        tmp_path,
        f'redis_server = "127.0.0.1"\nredis_port = {redis_server.port}\n'
        f'redis_password = "{redis_server.password}"\nredis_namespace = "{redis_namespace}"\n',
    )
    result = invoke(["queue", "stats", "--json", "--config", str(config)], tmp_path / "var")

    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)
    warning = (
        f"async_emails = false: no project uses the queue, yet a Redis is configured "
        f'(127.0.0.1:{redis_server.port}); set async_emails = "all" (or project ids) to use it'
    )
    assert values["target"] == {
        "config": f"{config} (from --config), overridden by HERALD_DATA_DIR",
        "queue": f"redis 127.0.0.1:{redis_server.port} (namespace {redis_namespace})",
        "warnings": [warning],
    }
    assert f"WARNING: {warning}" in result.stderr
    assert redis_server.password not in result.output


@pytest.mark.redis
def test_queue_dead_names_the_redis_it_reads(tmp_path, redis_server, redis_namespace):
    env = {
        "HERALD_REDIS_URL": redis_server.url,
        "HERALD_REDIS_NAMESPACE": redis_namespace,
        "HERALD_ASYNC_EMAILS": "all",
    }
    result = invoke(["queue", "dead"], tmp_path / "var", **env)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == [
        "config: none (built-in defaults; pass --config FILE or set HERALD_CONFIG), overridden by "
        "HERALD_ASYNC_EMAILS, HERALD_DATA_DIR, HERALD_REDIS_NAMESPACE, HERALD_REDIS_URL",
        f"queue: redis 127.0.0.1:{redis_server.port} (namespace {redis_namespace})",
    ]
    assert "WARNING" not in result.stdout
    assert redis_server.password not in result.output
