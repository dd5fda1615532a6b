"""``redis_health``: advice for ``herald doctor``, read with CONFIG GET only."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from herald.config import Settings
from herald.queue import QueueUnavailable
from herald.queue.health import redis_health
from herald.queue.redis_client import connect
from tests.support.redis_server import RedisServer
from tests.support.services import free_port, service_missing

pytestmark = pytest.mark.redis


@pytest.fixture
def acl_user(redis_server: RedisServer) -> Iterator[tuple[str, str]]:
    """A throw-away ACL user on the test server: (name, password), deleted afterwards."""
    admin = redis_server.client()
    name = f"t-{secrets.token_hex(4)}"
    yield name, "short-pw"
    admin.acl_deluser(name)
    admin.close()


def client_as(server: RedisServer, user: str, password: str) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, username=user, password=password)


def test_a_well_set_up_redis_has_no_warnings(redis_server: RedisServer) -> None:
    client = redis_server.client()
    try:
        assert redis_health(client) == []  # 40-character password, appendonly yes, noeviction
    finally:
        client.close()


def test_a_short_password_is_flagged_without_showing_it(
    redis_server: RedisServer, acl_user: tuple[str, str]
) -> None:
    name, password = acl_user
    admin = redis_server.client()
    admin.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    admin.close()
    client = client_as(redis_server, name, password)
    try:
        warnings = redis_health(client)
    finally:
        client.close()
    assert len(warnings) == 1 and "8 characters long" in warnings[0]
    assert password not in warnings[0]


def test_config_that_cannot_be_read_is_one_warning_not_an_error(
    redis_server: RedisServer, acl_user: tuple[str, str]
) -> None:
    name, _ = acl_user
    password = secrets.token_hex(20)
    admin = redis_server.client()
    admin.acl_setuser(
        name, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all", "-config"]
    )
    admin.close()
    client = client_as(redis_server, name, password)
    try:
        [warning] = redis_health(client)
    finally:
        client.close()
    assert "cannot read the Redis configuration" in warning


def test_the_machines_own_redis_is_flagged() -> None:
    """The Redis at 127.0.0.1:6379 runs without a password or persistence. Only read from it."""
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)
    try:
        try:
            client.ping()
        except redis.exceptions.RedisError as exc:
            service_missing(f"no Redis at 127.0.0.1:6379: {exc}")
        warnings = redis_health(client)
    finally:
        client.close()
    assert any("without a password" in w for w in warnings)
    assert any("appendonly is off" in w for w in warnings)


def test_an_unreachable_redis_raises_queue_unavailable() -> None:
    client = connect(Settings(redis_url=f"redis://:{'x' * 40}@127.0.0.1:{free_port()}/0"))
    try:
        with pytest.raises(QueueUnavailable):
            redis_health(client)
    finally:
        client.close()
