"""The Redis connection herald uses, and the translation of redis-py errors into herald's queue errors.

Three deployments, each through redis-py's own client: one server (``redis_server``/``redis_url``), a
master watched by Sentinel (``redis_sentinels`` + ``redis_sentinel_master``: the client asks the sentinels
where the master is and follows failovers), and Redis Cluster (``redis_cluster``: any node names the
cluster; the client follows MOVED/ASK redirections and topology changes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import AbstractBackoff, ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from herald.config import Settings
from herald.queue.errors import QueueError, QueueUnavailable

__all__ = ["RedisClient", "client_password", "connect", "is_cluster", "translate_errors"]

CONNECT_TIMEOUT = 5.0
#: Longer than any blocking read the queue issues (those are capped at about a second).
SOCKET_TIMEOUT = 10.0

#: What :func:`connect` returns: a plain client (one server, or Sentinel's master) or a cluster client.
RedisClient = redis.Redis | RedisCluster

# Errors that say "the server cannot serve us right now": refused, timed out, loading its AOF after a
# restart, a replica after failover, a cluster slot moving or without a master, or credentials it does not
# accept (an operator fixes those without restarting herald, so a worker backs off and tries again rather
# than dying).
_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,  # includes AuthenticationError, BusyLoadingError, MasterNotFoundError
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.AuthenticationWrongNumberOfArgsError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.ClusterError,  # "TTL exhausted": redirections kept failing during a failover
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
    # Not RedisErrors: the cluster client's own "no node serves this slot / no node answers".
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.RedisClusterUnreachableError,
)


class _SentinelMaster(redis.Redis):
    """The master's client that also closes its connections to the sentinels."""

    sentinel: Sentinel | None = None

    def close(self) -> None:
        super().close()
        if self.sentinel is not None:
            for client in self.sentinel.sentinels:
                client.close()


def connect(
    settings: Settings,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    socket_timeout: float = SOCKET_TIMEOUT,
    backoff: AbstractBackoff | None = None,
    client_name: str | None = None,
) -> RedisClient:
    """A client for ``settings``' Redis (password, ACL user and ``rediss://`` TLS come from the URL;
    ``redis_ca_file`` names the CA that signs the server's certificate).

    No I/O happens here; the first command connects. A command that meets a dropped connection (a
    Redis restart, a failover) is retried once on a fresh one, so a restart costs callers nothing; a
    server that is really down fails fast with :class:`QueueUnavailable` instead of blocking a worker in
    backoff. The front end passes shorter timeouts: a dead Redis must not hold a request.
    """
    common: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "retry": Retry(backoff or ExponentialBackoff(cap=0.2, base=0.05), 1),
        "protocol": 2,
        "client_name": client_name,
    }
    if settings.redis_sentinels:
        return _sentinel_master(settings, common)
    url = settings.redis_connection_url()
    if not url:
        raise QueueError("queue_backend = 'redis' needs redis_server, redis_url or redis_sentinels")
    if settings.redis_ca_file is not None and url.startswith("rediss://"):
        common.update(ssl_ca_certs=str(settings.redis_ca_file), ssl_cert_reqs="required")
    if settings.redis_cluster:
        # Redirections (MOVED during a reshard, a new master after a failover) are followed by the
        # client; these bound how long it keeps trying before the caller hears QueueUnavailable.
        return RedisCluster.from_url(url, **common)
    return redis.Redis.from_url(url, **common)


def _sentinel_master(settings: Settings, common: dict[str, Any]) -> redis.Redis:
    sentinels = [_host_port(one) for one in (settings.redis_sentinels or "").split(",") if one.strip()]
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": common["socket_connect_timeout"],
        "socket_timeout": common["socket_timeout"],
    }
    if settings.redis_sentinel_password:
        sentinel_kwargs["password"] = settings.redis_sentinel_password
    data: dict[str, Any] = dict(common)
    if settings.redis_password:
        data["password"] = settings.redis_password
        if settings.redis_user:
            data["username"] = settings.redis_user
    if settings.redis_tls:
        data["ssl"] = True
        if settings.redis_ca_file is not None:
            data.update(ssl_ca_certs=str(settings.redis_ca_file), ssl_cert_reqs="required")
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
    master = sentinel.master_for(settings.redis_sentinel_master or "", redis_class=_SentinelMaster, **data)
    master.sentinel = sentinel
    return master


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    return host.strip("[]"), int(port)


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


def client_password(client: RedisClient) -> str | None:
    """The password ``client`` authenticates with (to judge its strength, never to show it)."""
    if isinstance(client, RedisCluster):
        kwargs = client.nodes_manager.connection_kwargs
    else:
        kwargs = client.connection_pool.connection_kwargs
    password = kwargs.get("password")
    if password is None and kwargs.get("url"):
        password = urlsplit(kwargs["url"]).password
        password = unquote(password) if password else None
    return password


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise redis-py errors as herald's: :class:`QueueUnavailable` if transient, else QueueError.

    Messages carry the error class and text but never the URL, which may hold the password.
    """
    try:
        yield
    except _UNAVAILABLE as exc:
        raise QueueUnavailable(f"Redis unavailable: {exc.__class__.__name__}: {exc}") from exc
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        raise QueueError(f"Redis error: {exc.__class__.__name__}: {exc}") from exc
