"""The Redis backend over TLS (rediss://, a private CA) and as a restricted ACL user, against a real
redis-server started here with both."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from herald.config import load_settings
from herald.queue import Job, QueueUnavailable, make_queue
from tests.support.services import free_port, service_missing
from tests.support.smtp import TlsFiles, make_self_signed


@dataclass
class TlsRedis:
    port: int
    password: str
    user_password: str
    tls: TlsFiles


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        service_missing("redis-server is not on PATH")
    directory = tmp_path_factory.mktemp("redis-tls")
    tls = make_self_signed(directory)
    if tls is None:
        service_missing("cannot make a TLS certificate")
    server = TlsRedis(free_port(), secrets.token_hex(20), secrets.token_hex(20), tls)
    # The ACL user may touch only herald's keys ({herald-acl}:*, and the shards' {herald-acl:<n>:<salt>}:*)
    # and no dangerous command (CONFIG, KEYS...).
    acl = directory / "users.acl"
    acl.write_text(
        f"user default on >{server.password} ~* &* +@all\n"
        f"user herald on >{server.user_password} ~{{herald-acl}}:* ~{{herald-acl:* &* +@all -@dangerous\n"
    )
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(server.port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key), "--tls-auth-clients", "no",
         "--aclfile", str(acl), "--appendonly", "yes", "--dir", str(directory), "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    client = redis.Redis(
        host="127.0.0.1", port=server.port, password=server.password, ssl=True, ssl_ca_certs=str(tls.cert)
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("TLS redis-server did not start")
            time.sleep(0.02)
    client.close()
    yield server
    proc.terminate()
    proc.wait(timeout=10)


def _settings(server: TlsRedis, tmp_path: Path, **extra: str):
    env = {
        "HERALD_DATA_DIR": str(tmp_path),
        "HERALD_REDIS_SERVER": "127.0.0.1",
        "HERALD_REDIS_PORT": str(server.port),
        "HERALD_REDIS_TLS": "true",
        "HERALD_REDIS_CA_FILE": str(server.tls.cert),
        "HERALD_REDIS_USER": "herald",
        "HERALD_REDIS_PASSWORD": server.user_password,
        "HERALD_REDIS_NAMESPACE": "herald-acl",
    }
    env.update({f"HERALD_{k.upper()}": v for k, v in extra.items()})
    return load_settings(env=env)


def test_round_trip_over_tls_as_an_acl_user(tls_redis: TlsRedis, tmp_path: Path):
    with make_queue(_settings(tls_redis, tmp_path)) as queue:
        job = Job.new(42)
        queue.enqueue(job)
        claimed = queue.claim("w1", timeout=2)
        assert claimed is not None and claimed.changeset_id == 42
        queue.ack(claimed)
        assert queue.stats().depth == 0


def test_the_acl_user_cannot_leave_its_namespace(tls_redis: TlsRedis, tmp_path: Path):
    # Proof the restriction is real: the same credentials cannot reach another namespace's keys.
    with (
        make_queue(_settings(tls_redis, tmp_path, redis_namespace="other")) as queue,
        pytest.raises(QueueUnavailable),
    ):
        queue.enqueue(Job.new(1))


def test_without_the_ca_the_server_certificate_is_refused(tls_redis: TlsRedis, tmp_path: Path):
    settings = _settings(tls_redis, tmp_path)
    import dataclasses

    with (
        make_queue(dataclasses.replace(settings, redis_ca_file=None)) as queue,
        pytest.raises(QueueUnavailable),
    ):
        queue.ping()
