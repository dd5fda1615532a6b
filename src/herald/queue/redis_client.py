"""The Redis connection herald uses, and the translation of redis-py errors into herald's queue errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.backoff import AbstractBackoff, ExponentialBackoff
from redis.retry import Retry

from herald.config import Settings
from herald.queue.errors import QueueError, QueueUnavailable

__all__ = ["connect", "translate_errors"]

CONNECT_TIMEOUT = 5.0
#: Longer than any blocking read the queue issues (those are capped at about a second).
SOCKET_TIMEOUT = 10.0

# Errors that say "the server cannot serve us right now": refused, timed out, loading its AOF after a
# restart, a replica after failover, or credentials it does not accept (an operator fixes those without
# restarting herald, so a worker backs off and tries again rather than dying).
_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,  # includes AuthenticationError, BusyLoadingError
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.AuthenticationWrongNumberOfArgsError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


def connect(
    settings: Settings,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    socket_timeout: float = SOCKET_TIMEOUT,
    backoff: AbstractBackoff | None = None,
    client_name: str | None = None,
) -> redis.Redis:
    """A client for ``settings``' Redis (password, ACL user and ``rediss://`` TLS come from the URL;
    ``redis_ca_file`` names the CA that signs the server's certificate).

    No I/O happens here; the first command connects. A command that meets a dropped connection (a
    Redis restart) is retried once on a fresh one, so a restart costs callers nothing; a server that is
    really down fails fast with :class:`QueueUnavailable` instead of blocking a worker in backoff. The
    front end passes shorter timeouts: a dead Redis must not hold a request.
    """
    url = settings.redis_connection_url()
    if not url:
        raise QueueError("queue_backend = 'redis' needs redis_server or redis_url")
    tls: dict[str, str] = {}
    if settings.redis_ca_file is not None and url.startswith("rediss://"):
        tls = {"ssl_ca_certs": str(settings.redis_ca_file), "ssl_cert_reqs": "required"}
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        retry=Retry(backoff or ExponentialBackoff(cap=0.2, base=0.05), 1),
        protocol=2,
        client_name=client_name,
        **tls,
    )


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise redis-py errors as herald's: :class:`QueueUnavailable` if transient, else QueueError.

    Messages carry the error class and text but never the URL, which may hold the password.
    """
    try:
        yield
    except _UNAVAILABLE as exc:
        raise QueueUnavailable(f"Redis unavailable: {exc.__class__.__name__}: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        raise QueueError(f"Redis error: {exc.__class__.__name__}: {exc}") from exc
