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
-- KEYS[4] attempts  job id -> claims since last settled
-- ARGV: group, entry id, job id, payload, delay ms, reason.  Returns 1, or 0 if the lease was lost.
-- A retry settles the job (its worker gave a verdict), so its claim count starts again.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[6])
redis.call('HDEL', KEYS[4], ARGV[3])
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

# Moves due retries to the stream; run by every claimer before it blocks. A due time further ahead than
# any retry herald writes (or +inf) is garbage: that member moves now too, and is judged when claimed (a
# payload that is not a job is dead-lettered), rather than sit in the set for ever.
# Race: two claimers promoting at once would XADD the same payload twice; atomically only one sees it.
PROMOTE = (
    """\
-- KEYS[1] delayed   payload -> unix ms at which it is due
-- KEYS[2] stream    ready and in-flight jobs
-- ARGV: most payloads to move, longest delay in ms.
-- Returns {moved, ms until the next delayed job is due or -1}.
"""
    + _NOW_MS
    + """\
local limit = tonumber(ARGV[1])
local horizon = now_ms + tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, limit)
if #due < limit then
  local absurd = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', horizon), '+inf',
                            'LIMIT', 0, limit - #due)
  for _, payload in ipairs(absurd) do table.insert(due, payload) end
end
for _, payload in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', '$JOB_FIELD', payload)
  redis.call('ZREM', KEYS[1], payload)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {#due, -1} end
local wait = tonumber(nxt[2]) - now_ms
if wait ~= wait or wait < 0 then wait = 0 end
return {#due, math.floor(math.min(wait, tonumber(ARGV[2])))}
"""
)

# Counts one claim of each job just read. The counter is only trusted if it is a small whole number:
# anything else (written by something other than herald) is reported, and the caller dead-letters that
# job instead of failing on HINCRBY ("hash value is not an integer") and re-claiming it for ever.
COUNT = """\
-- KEYS[1] attempts   job id -> claims since last settled
-- KEYS[2] errors     job id -> last retry reason
-- ARGV: largest believable count, then job ids.
-- Returns, per job id: {count or -1 if corrupt, last retry reason or false, corrupt value or false}.
local out = {}
local most = tonumber(ARGV[1])
for i = 2, #ARGV do
  local id = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], id)
  local n = 0
  if raw then
    if #raw <= 10 and string.match(raw, '^%d+$') then n = tonumber(raw) else n = nil end
    if n and n > most then n = nil end
  end
  if n then
    n = n + 1
    redis.call('HSET', KEYS[1], id, n)
    table.insert(out, n)
    table.insert(out, redis.call('HGET', KEYS[2], id))
    table.insert(out, false)
  else
    table.insert(out, -1)
    table.insert(out, false)
    table.insert(out, raw)
  end
end
return out
"""

# Hands back every entry one consumer holds (its process died): each is re-added to the stream under a
# new id, where the next XREADGROUP of any consumer finds it, and the old entry is acked and deleted, which
# voids the dead consumer's receipt. Claim counts (KEYS of the caller's hash) are untouched: a job that
# kills its worker each time still dies as poison. The consumer is deleted once it holds nothing.
# Race: a separate XPENDING, XADD, XACK could interleave with the consumer's own late ack and add a job
# that was just finished; in one script the ack either came first (nothing pending) or finds nothing.
RELEASE = """\
-- KEYS[1] stream   ready and in-flight jobs
-- ARGV: group, consumer, count.  Returns {entries handed back, entries looked at}.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[3]), ARGV[2])
local n = 0
for _, e in ipairs(p) do
  local got = redis.call('XRANGE', KEYS[1], e[1], e[1])
  if #got > 0 then
    redis.call('XADD', KEYS[1], '*', unpack(got[1][2]))
    n = n + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], e[1])
  redis.call('XDEL', KEYS[1], e[1])
end
if #p < tonumber(ARGV[3]) then redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) end
return {n, #p}
"""

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

# Renews many leases at once (the lease keeper of a worker process); EXTEND's race, per entry.
EXTEND_MANY = """\
-- KEYS[1] stream   ready and in-flight jobs
-- ARGV: group, entry ids.  Returns, per entry id, 1 if renewed or 0 if no longer pending.
local out = {}
for i = 2, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 0 then
    table.insert(out, 0)
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], p[1][2], 0, ARGV[i], 'JUSTID')
    table.insert(out, 1)
  end
end
return out
"""

# One consistent snapshot of the counters. A missing group (fresh or lost Redis) means nothing pending.
# The oldest age only counts enqueue times that can be real (ARGV bounds): a 0 written into the live set
# by something else once made the admin page show a job 57 years old.
STATS = """\
-- KEYS[1] stream    ready and in-flight jobs
-- KEYS[2] delayed   payload -> due time
-- KEYS[3] live      job id -> enqueued_at
-- KEYS[4] dead      job id -> dead-letter record
-- ARGV: group, earliest and latest plausible enqueued_at.
-- Returns {stream length, pending, delayed, dead, oldest plausible enqueued_at as text or false}.
local pending = 0
local summary = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(summary) == 'table' and not summary.err then pending = summary[1] end
local oldest = redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[2], ARGV[3], 'WITHSCORES', 'LIMIT', 0, 1)
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

# Deletes one dead letter (an admin's "discard"); both keys in one step so the index never outlives it.
DISCARD = """\
-- KEYS[1] dead         job id -> dead-letter record
-- KEYS[2] dead_index   job id -> died_at
-- ARGV: job id.  Returns 1 if the letter was there, else 0.
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

SOURCES: dict[str, str] = {
    name: source.replace("$JOB_FIELD", JOB_FIELD.decode())
    for name, source in {
        "enqueue": ENQUEUE,
        "ack": ACK,
        "retry": RETRY,
        "dead": DEAD,
        "promote": PROMOTE,
        "count": COUNT,
        "release": RELEASE,
        "reclaim": RECLAIM,
        "extend": EXTEND,
        "extend_many": EXTEND_MANY,
        "stats": STATS,
        "requeue": REQUEUE,
        "purge": PURGE,
        "discard": DISCARD,
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
    count: Script
    release: Script
    reclaim: Script
    extend: Script
    extend_many: Script
    stats: Script
    requeue: Script
    purge: Script
    discard: Script

    @classmethod
    def register(cls, client: redis.Redis) -> Scripts:
        return cls(**{name: client.register_script(source) for name, source in SOURCES.items()})
