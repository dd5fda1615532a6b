"""Every Redis key and name the queue uses, in one place.

The queue is split into ``queue_shards`` shards. Each shard's keys share one hash tag, so a Lua script may
touch several of them atomically (Redis Cluster only allows that within one slot), and different shards
carry different tags, so Cluster spreads them over its masters:

- one shard: the tag is ``{<namespace>}``, the layout of herald 0.2;
- N shards: shard ``n`` has the tag ``{<namespace>:<n>:<salt>}``, the salt being the first number that
  puts the tag's slot near the middle of the n-th N-th of the 16384 slots. ``redis-cli --cluster create``
  gives each master one contiguous range of slots, so evenly spaced shards land on different masters.

A changeset always goes to the same shard (:meth:`RedisKeys.shard_for`), which is what lets a re-pushed job
find its first push and collapse into it. Changing ``queue_shards`` moves changesets to other shards; the
jobs left in the old ones are re-pushed by the outbox relay (see docs/scaling.md).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from herald.queue.errors import QueueError

__all__ = ["GROUP", "JOB_FIELD", "MAX_SHARDS", "RECLAIMER", "RedisKeys", "ShardKeys"]

#: The consumer group every worker reads through, one per shard's stream.
GROUP = "herald-workers"
#: The consumer that stale entries are claimed into for the instant before they are re-added.
RECLAIMER = "herald-reclaimer"
#: The stream entry field that holds the JSON payload.
JOB_FIELD = b"job"
#: Most shards a queue may have: every idle claim looks at each one.
MAX_SHARDS = 64


@dataclass(frozen=True)
class ShardKeys:
    """The keys of one shard, all under one hash tag ``{tag}``."""

    index: int
    tag: str

    def _key(self, name: str) -> str:
        return f"{{{self.tag}}}:{name}"

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
        return (self.stream, self.delayed, self.live, self.attempts, self.errors, self.dead, self.dead_index)


@dataclass(frozen=True)
class RedisKeys:
    """The keys of one herald queue: ``shards`` shards under the namespace, and the doorbell."""

    namespace: str
    shards: int = 1

    def __post_init__(self) -> None:
        # An empty tag ("{}") or one with braces would hash each key on its full name and scatter
        # the keys over Cluster slots, breaking every multi-key script.
        if not self.namespace or "{" in self.namespace or "}" in self.namespace:
            raise QueueError(
                f"redis_namespace = {self.namespace!r} is not allowed: non-empty, without {{ or }}"
            )
        if type(self.shards) is not int or not 1 <= self.shards <= MAX_SHARDS:
            raise QueueError(f"queue_shards = {self.shards!r} is not allowed: 1 to {MAX_SHARDS}")

    @cached_property
    def by_index(self) -> tuple[ShardKeys, ...]:
        """Every shard, shard ``n`` at index ``n``."""
        if self.shards == 1:
            return (ShardKeys(0, self.namespace),)
        return tuple(ShardKeys(n, _spread_tag(self.namespace, n, self.shards)) for n in range(self.shards))

    def shard(self, index: int) -> ShardKeys:
        return self.by_index[index]

    def shard_for(self, changeset_id: int) -> ShardKeys:
        """The shard that holds ``changeset_id``'s jobs: stable for a given number of shards."""
        return self.by_index[zlib.crc32(str(changeset_id).encode()) % self.shards]

    @property
    def bell(self) -> str:
        """Stream rung (capped, a few entries) after every push: idle claimers block on it, not on the
        shards, because Cluster cannot block on streams in different slots with one command."""
        return f"{{{self.namespace}}}:bell"

    def all(self) -> tuple[str, ...]:
        """Every key, for tests and for tools that inspect or migrate a namespace."""
        return (*(key for shard in self.by_index for key in shard.all()), self.bell)


def _spread_tag(namespace: str, index: int, shards: int) -> str:
    """A hash tag for shard ``index`` whose slot lies near the middle of its share of the slot space."""
    width = REDIS_CLUSTER_HASH_SLOTS / shards
    centre = (index + 0.5) * width
    tolerance = max(1.0, width / 8)
    salt = 0
    while True:
        tag = f"{namespace}:{index}:{salt}"
        if abs(key_slot(tag.encode()) - centre) <= tolerance:
            return tag
        salt += 1
