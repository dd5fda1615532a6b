"""What a command is looking at: which configuration, which queue, and the mismatches worth a warning.

Without this, ``herald check`` run without the config that ``herald up`` uses reports on the embedded SQL
queue and says OK. Every command that reports on the system prints these lines first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

import click

from herald.cli.main import Context
from herald.config import Settings


@dataclass(frozen=True)
class Target:
    """The lines that say what a command reports on; ``warnings`` are the mismatches an admin must see."""

    config: str
    queue: str
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"config: {self.config}", f"queue: {self.queue}", *(f"WARNING: {w}" for w in self.warnings)]

    def as_dict(self) -> dict[str, object]:
        return {"config": self.config, "queue": self.queue, "warnings": list(self.warnings)}

    def echo(self, *, err: bool = False) -> None:
        for line in self.lines():
            click.echo(line, err=err)


def _database(settings: Settings) -> str:
    return str(settings.redacted()["database_url"])  # the password masked


def redis_address(settings: Settings) -> str:
    """``host:port`` of the configured Redis (never its password)."""
    if settings.redis_url:
        parts = urlsplit(settings.redis_url)
        if parts.scheme == "unix":
            return f"unix:{parts.path}"
        return f"{parts.hostname}:{parts.port or 6379}"
    return f"{settings.redis_server}:{settings.redis_port}"


def describe_queue(settings: Settings) -> str:
    """The queue backend and where it lives, in one phrase."""
    if settings.queue_backend == "redis":
        tls = ", tls" if settings.redis_tls or (settings.redis_url or "").startswith("rediss:") else ""
        return f"redis {redis_address(settings)} (namespace {settings.redis_namespace}{tls})"
    return f"sql in {_database(settings)}"


def mismatches(settings: Settings) -> list[str]:
    """Configurations that run, but almost certainly not as meant."""
    found: list[str] = []
    if not settings.async_emails.enabled and settings.redis_configured:
        found.append(
            f"async_emails = false: no project uses the queue, yet a Redis is configured "
            f'({redis_address(settings)}); set async_emails = "all" (or project ids) to use it'
        )
    if settings.async_emails.enabled and not settings.redis_configured:
        found.append(
            f"async_emails = {settings.async_emails} with no Redis configured: the SQL queue in "
            f"{_database(settings)} is used (set redis_server to use Redis)"
        )
    return found


def describe(ctx: Context) -> Target:
    """What this invocation looks at (loads the settings: a bad config stops here with exit code 3)."""
    settings = ctx.settings
    return Target(ctx.config_source(), describe_queue(settings), mismatches(settings))
