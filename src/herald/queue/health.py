"""Sanity checks of a Redis server for ``herald doctor``: read-only, one line of advice per problem."""

from __future__ import annotations

import redis

from herald.queue.redis_client import RedisClient, client_password, translate_errors

__all__ = ["MIN_PASSWORD_LENGTH", "redis_health"]

MIN_PASSWORD_LENGTH = 30


def redis_health(client: RedisClient) -> list[str]:
    """Warnings about how ``client``'s Redis is set up for a job queue; empty when all is well.

    Looks at the password the client uses (its length only; it is never shown), and with ``CONFIG GET``
    (never SET) at persistence and eviction. Managed services often disable CONFIG: that yields one
    warning asking to check by hand, not an error. Raises QueueUnavailable if the server cannot be
    reached.
    """
    warnings: list[str] = []
    password = client_password(client)
    if not password:
        warnings.append(
            "Redis is used without a password: anyone who can reach its port can read and change the queue; "
            f"set one of at least {MIN_PASSWORD_LENGTH} random characters (requirepass or an ACL user)"
        )
    elif len(password) < MIN_PASSWORD_LENGTH:
        warnings.append(
            f"the Redis password is {len(password)} characters long: Redis answers fast enough for it "
            f"to be guessed; use at least {MIN_PASSWORD_LENGTH} random characters"
        )
    with translate_errors():
        try:
            config = {**client.config_get("appendonly"), **client.config_get("maxmemory-policy")}
        except redis.exceptions.ResponseError as exc:  # CONFIG renamed away, or NOPERM for this ACL user
            warnings.append(
                f"cannot read the Redis configuration ({str(exc).split(' ', 1)[0]}): check by hand that "
                "appendonly is yes and maxmemory-policy is noeviction"
            )
            return warnings
    values = {_text(key): _text(value) for key, value in config.items()}
    if values.get("appendonly") != "yes":
        warnings.append(
            "Redis appendonly is off: queued jobs are lost when Redis restarts (the tracker's outbox "
            "re-pushes them, late); set appendonly yes"
        )
    policy = values.get("maxmemory-policy")
    if policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy}: under memory pressure Redis may evict queue keys; "
            "set maxmemory-policy noeviction"
        )
    return warnings


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
