"""The Lua scripts behind every multi-key change of the Redis queue.

A script runs atomically, so each one replaces a read-check-write race between workers (named in its
header). Every key a script touches arrives in KEYS, listed in the key map at its top, and no script builds a
key name itself: that is what lets Redis Cluster route the call. Times come from the server's clock
(``TIME``) so that workers with skewed clocks agree on when a retry is due.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.commands.core import Script

from herald.queue.keys import JOB_FIELD

__all__ = ["SOURCES", "Scripts"]

_NOW_MS = (
    "local t = redis.call('TIME')\nlocal now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
)

# Adds a job unless its id is already live or dead.
# Race: a check-then-XADD from Python would let two producers both see "absent" and both add the job.
ENQUEUE = """\
-- KEYS[1] stream   ready and in-flight jobs
-- KEYS[2] live     job id -> enqueued_at of every job not yet acked or dead
-- KEYS[3] dead     job id -> dead-letter record
-- ARGV: job id, payload, enqueued_at.  Returns 1 if added, 0 if the queue already holds the id.
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 0 end
if redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[1], '*', '$JOB_FIELD', ARGV[2])
return 1
"""

# Finishes a delivery. XACK is the ownership test: it returns 0 when the entry was reclaimed (re-added
# under a new id) since this worker claimed it, and then nothing else may change.
ACK = """\
-- KEYS[1] stream     ready and in-flight jobs
-- KEYS[2] live       job id -> enqueued_at
-- KEYS[3] attempts   job id -> claims so far
-- KEYS[4] errors     job id -> last retry reason
-- ARGV: group, entry id, job id.  Returns 1, or 0 if the lease was lost.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[3])
return 1
"""

# Moves a delivery to the delayed set (or straight back to the stream when there is no delay).
# Race: between a separate XACK and ZADD a crash would lose the job; here both happen or neither.
RETRY = (
    """\
-- KEYS[1] stream    ready and in-flight jobs
-- KEYS[2] delayed   payload -> unix ms at which it is due
-- KEYS[3] errors    job id -> last retry reason
-- ARGV: group, entry id, job id, payload, delay ms, reason.  Returns 1, or 0 if the lease was lost.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[6])
local delay = tonumber(ARGV[5])
if delay <= 0 then
  redis.call('XADD', KEYS[1], '*', '$JOB_FIELD', ARGV[4])
  return 1
end
"""
    + _NOW_MS
    + """\
redis.call('ZADD', KEYS[2], now_ms + delay, ARGV[4])
return 1
"""
)

# Dead-letters a delivery (worker's verdict, too many attempts, or a malformed payload).
DEAD = """\
-- KEYS[1] stream       ready and in-flight jobs
-- KEYS[2] live         job id -> enqueued_at
-- KEYS[3] attempts     job id -> claims so far
-- KEYS[4] errors       job id -> last retry reason
-- KEYS[5] dead         job id -> dead-letter record
-- KEYS[6] dead_index   job id -> died_at
-- ARGV: group, entry id, job id, record (JSON), died_at.  Returns 1, or 0 if the lease was lost.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('HSET', KEYS[5], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[6], ARGV[5], ARGV[3])
return 1
"""

# Moves due retries to the stream; run by every claimer before it blocks.
# Race: two claimers promoting at once would XADD the same payload twice; atomically only one sees it.
PROMOTE = (
    """\
-- KEYS[1] delayed   payload -> unix ms at which it is due
-- KEYS[2] stream    ready and in-flight jobs
-- ARGV: most payloads to move.  Returns {moved, ms until the next delayed job is due or -1}.
"""
    + _NOW_MS
    + """\
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, payload in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', '$JOB_FIELD', payload)
end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {#due, -1} end
return {#due, math.max(0, tonumber(nxt[2]) - now_ms)}
"""
)

# Puts entries whose lease expired (idle longer than the lease) back at the end of the stream under a
# new id, which voids the old owner's receipt: its late ack or retry then finds nothing to act on.
# Race: a separate XAUTOCLAIM then XADD could crash in between and leave the job owned by nobody alive.
RECLAIM = """\
-- KEYS[1] stream   ready and in-flight jobs
-- ARGV: group, reclaiming consumer, min idle ms, cursor, count.  Returns {next cursor, reclaimed}.
local res = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local n = 0
for _, entry in ipairs(res[2]) do
  if entry[2] then
    redis.call('XADD', KEYS[1], '*', unpack(entry[2]))
    n = n + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], entry[1])
  redis.call('XDEL', KEYS[1], entry[1])
end
return {res[1], n}
"""

# Resets a delivery's idle time, keeping its owner. Race: the entry may be reclaimed between reading its
# owner and XCLAIM; in one script it either is still pending (renewed) or is not (0, lease lost).
EXTEND = """\
-- KEYS[1] stream   ready and in-flight jobs
-- ARGV: group, entry id.  Returns 1, or 0 if the entry is no longer pending.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], p[1][2], 0, ARGV[2], 'JUSTID')
return 1
"""

# One consistent snapshot of the counters. A missing group (fresh or lost Redis) means nothing pending.
STATS = """\
-- KEYS[1] stream    ready and in-flight jobs
-- KEYS[2] delayed   payload -> due time
-- KEYS[3] live      job id -> enqueued_at
-- KEYS[4] dead      job id -> dead-letter record
-- ARGV: group.  Returns {stream length, pending, delayed, dead, oldest enqueued_at as text or false}.
local pending = 0
local summary = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(summary) == 'table' and not summary.err then pending = summary[1] end
local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return {redis.call('XLEN', KEYS[1]), pending, redis.call('ZCARD', KEYS[2]), redis.call('HLEN', KEYS[4]),
        oldest[2] or false}
"""

# Brings one dead letter back. ARGV[2] is the record as the caller read it: compare-and-swap, because an
# admin may purge or requeue the same letter between our read and this script.
REQUEUE = """\
-- KEYS[1] dead         job id -> dead-letter record
-- KEYS[2] dead_index   job id -> died_at
-- KEYS[3] live         job id -> enqueued_at
-- KEYS[4] attempts     job id -> claims so far
-- KEYS[5] stream       ready and in-flight jobs
-- ARGV: job id, record as read, new payload, enqueued_at.  Returns 1, or 0 if the record changed.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('XADD', KEYS[5], '*', '$JOB_FIELD', ARGV[3])
return 1
"""

# Deletes every dead letter; counting and deleting in one step so the count is what was deleted.
PURGE = """\
-- KEYS[1] dead         job id -> dead-letter record
-- KEYS[2] dead_index   job id -> died_at
-- Returns how many letters were deleted.
local n = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return n
"""

SOURCES: dict[str, str] = {
    name: source.replace("$JOB_FIELD", JOB_FIELD.decode())
    for name, source in {
        "enqueue": ENQUEUE,
        "ack": ACK,
        "retry": RETRY,
        "dead": DEAD,
        "promote": PROMOTE,
        "reclaim": RECLAIM,
        "extend": EXTEND,
        "stats": STATS,
        "requeue": REQUEUE,
        "purge": PURGE,
    }.items()
}


@dataclass(frozen=True)
class Scripts:
    """The scripts registered on one client. redis-py reloads a script the server forgot (NOSCRIPT),
    which is what happens after every Redis restart."""

    enqueue: Script
    ack: Script
    retry: Script
    dead: Script
    promote: Script
    reclaim: Script
    extend: Script
    stats: Script
    requeue: Script
    purge: Script

    @classmethod
    def register(cls, client: redis.Redis) -> Scripts:
        return cls(**{name: client.register_script(source) for name, source in SOURCES.items()})
