"""Every Redis key and name the queue uses, in one place.

All keys start with the hash tag ``{<namespace>}`` so they land in one Redis Cluster slot: the Lua scripts
touch several of them atomically, which Cluster only allows within one slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from herald.queue.errors import QueueError

__all__ = ["GROUP", "JOB_FIELD", "RECLAIMER", "RedisKeys"]

#: The consumer group every worker reads through.
GROUP = "herald-workers"
#: The consumer that stale entries are claimed into for the instant before they are re-added.
RECLAIMER = "herald-reclaimer"
#: The stream entry field that holds the JSON payload.
JOB_FIELD = b"job"


@dataclass(frozen=True)
class RedisKeys:
    """The keys of one herald queue, all under the hash tag ``{namespace}``."""

    namespace: str

    def __post_init__(self) -> None:
        # An empty tag ("{}") or one with braces would hash each key on its full name and scatter
        # the keys over Cluster slots, breaking every multi-key script.
        if not self.namespace or "{" in self.namespace or "}" in self.namespace:
            raise QueueError(
                f"redis_namespace = {self.namespace!r} is not allowed: non-empty, without {{ or }}"
            )

    def _key(self, name: str) -> str:
        return f"{{{self.namespace}}}:{name}"

    @property
    def stream(self) -> str:
        """Stream of ready and in-flight jobs; consumer group :data:`GROUP`. Acked entries are deleted."""
        return self._key("stream")

    @property
    def delayed(self) -> str:
        """Sorted set: payload -> unix milliseconds (Redis clock) at which the retry becomes ready."""
        return self._key("delayed")

    @property
    def live(self) -> str:
        """Sorted set: job id -> enqueued_at, for every job not yet acked or dead (dedup, oldest age)."""
        return self._key("live")

    @property
    def attempts(self) -> str:
        """Hash: job id -> claims so far; survives retries and reclaims, unlike XPENDING's count."""
        return self._key("attempts")

    @property
    def errors(self) -> str:
        """Hash: job id -> reason given to the last ``retry``, quoted when the job dies."""
        return self._key("errors")

    @property
    def dead(self) -> str:
        """Hash: job id -> dead-letter record (JSON)."""
        return self._key("dead")

    @property
    def dead_index(self) -> str:
        """Sorted set: job id -> died_at, to list dead letters in order."""
        return self._key("dead:index")

    def all(self) -> tuple[str, ...]:
        """Every key, for tests and for tools that inspect or migrate a namespace."""
        return (self.stream, self.delayed, self.live, self.attempts, self.errors, self.dead, self.dead_index)
