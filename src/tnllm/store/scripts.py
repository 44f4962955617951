"""Lua scripts: every job state transition is one atomic script that checks the current state.

Keys are always passed in KEYS (never built inside Lua) so the scripts stay cluster-friendly.
Times are epoch seconds as decimal strings, chosen by the caller.
"""

from __future__ import annotations

# Shared by the scripts that make a job terminal: record, stream end marker, TTLs, notification.
_FINISH = """
local function finish(job, stream, job_id, status, now, ttl, channel)
  redis.call('HSET', job, 'status', status, 'finished_at', now)
  redis.call('XADD', stream, '*', 't', 'done', 'status', status)
  redis.call('EXPIRE', stream, ttl)
  redis.call('EXPIRE', job, ttl)
  redis.call('PUBLISH', channel, job_id)
end
"""

# KEYS: job, owner_jobs, queue, idem (a placeholder key when unused)
# ARGV: job_id, ttl, max_queued (0 = none), created_us, queue_score, idem_value ('' = none),
#       idem_ttl, prune_before_us, then field/value pairs of the record
CREATE = """
if ARGV[6] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {'replay', existing} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
local max_queued = tonumber(ARGV[3])
if max_queued > 0 then
  local depth = redis.call('ZCARD', KEYS[3])
  if depth >= max_queued then return {'full', tostring(depth)} end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[8])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[2])
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[7])
end
return {'created', ARGV[1], tostring(redis.call('ZRANK', KEYS[3], ARGV[1]))}
"""

# KEYS: job, owner_jobs, queue, idem (placeholder when unused)
# ARGV: job_id, idem_value ('' = none)
DISCARD = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[2] ~= '' and redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
return 1
"""

# KEYS: job, lease, queue, running
# ARGV: job_id, worker_id, now, lease_ms, ttl
# A replay of this very call (client retry after the first run's reply was lost) finds the job
# running for the same worker since the same started_at (``now`` of the call): it won, say so again.
# A second delivery claimed by the same process carries another ``now`` and still loses.
CLAIM = """
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_owner', 'started_at', 'attempt')
local status = f[1]
if not status then return {'missing', ''} end
if status == 'running' and f[2] == ARGV[2] and f[3] == ARGV[3] then return {'won', f[4]} end
if status ~= 'queued' then return {'lost', status} end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'lease_owner', ARGV[2], 'started_at', ARGV[3])
-- a new attempt numbers its stream flushes from 1 again (APPEND, APPEND_MANY)
redis.call('HDEL', KEYS[1], 'append_seq')
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[5])
return {'won', tostring(attempt)}
"""

# KEYS: job, lease
# ARGV: worker_id, lease_ms
RENEW = """
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_owner', 'cancel_requested')
if f[1] ~= 'running' or f[2] ~= ARGV[1] then return {0, 0} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if f[3] == '1' then return {1, 1} end
return {1, 0}
"""

# Idempotent appends: a writer numbers its flushes (seq 1, 2, ... per attempt; a retried flush keeps
# its number) and the job's record keeps the last applied one in ``append_seq`` (cleared by CLAIM,
# so a new attempt starts again). A flush numbered <= append_seq was applied already (a client
# retry after the reply was lost, or pending text resent): it writes nothing and says so.
# seq 0 = unnumbered (always written).
_SEEN = """
local function seen(job, seq)
  return seq > 0 and seq <= tonumber(redis.call('HGET', job, 'append_seq') or '0')
end
"""

# KEYS: job, stream
# ARGV: worker_id, ttl, seq, text...
# Answers the entry ids; {} = not the owner (nothing written); {'applied'} = seq applied already.
APPEND = (
    _SEEN
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_owner')
if f[1] ~= 'running' or f[2] ~= ARGV[1] then return {} end
local seq = tonumber(ARGV[3])
if seen(KEYS[1], seq) then return {'applied'} end
local ids = {}
for i = 4, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[2], '*', 't', 'token', 'text', ARGV[i])
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
if seq > 0 then redis.call('HSET', KEYS[1], 'append_seq', seq) end
return ids
"""
)

# KEYS: job, lease, running, stream
# ARGV: job_id, worker_id, status, now, result_json ('' = none), error_json ('' = none), ttl, channel
FINISH = (
    _FINISH
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_owner', 'finished_at')
-- a replay of this very call (same owner, status and finished_at = now): it was written, say so
if f[1] == ARGV[3] and f[2] == ARGV[2] and f[3] == ARGV[4] then return {1, ARGV[3]} end
if f[1] ~= 'running' or f[2] ~= ARGV[2] then return {0, f[1] or ''} end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[6]) end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
finish(KEYS[1], KEYS[4], ARGV[1], ARGV[3], ARGV[4], ARGV[7], ARGV[8])
return {1, ARGV[3]}
"""
)

# KEYS: job, queue, stream
# ARGV: job_id, now, ttl, finished_channel, cancel_channel
CANCEL = (
    _FINISH
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  redis.call('ZREM', KEYS[2], ARGV[1])
  finish(KEYS[1], KEYS[3], ARGV[1], 'cancelled', ARGV[2], ARGV[3], ARGV[4])
  return {'cancelled', 'cancelled'}
end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  redis.call('PUBLISH', ARGV[5], ARGV[1])
  return {'requested', 'running'}
end
return {'terminal', status}
"""
)

# Puts a running job back in the queue (or ends it when its cancel was requested). Shared tail of
# REAP and RELEASE. Expects `f` = HMGET status, attempt, cancel_requested, queue_score.
_BACK_TO_QUEUE = """
local function back_to_queue(f, reason)
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[4], ARGV[1])
  if f[3] == '1' then
    finish(KEYS[1], KEYS[5], ARGV[1], 'cancelled', ARGV[2], ARGV[3], ARGV[4])
    return {'cancelled', f[2] or '0'}
  end
  redis.call('HSET', KEYS[1], 'status', 'queued', 'lease_owner', '', 'started_at', '')
  redis.call('ZADD', KEYS[3], f[4], ARGV[1])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  redis.call('XADD', KEYS[5], '*', 't', 'reset', 'reason', reason)
  redis.call('EXPIRE', KEYS[5], ARGV[3])
  return {'requeued', f[2] or '0'}
end
"""

# KEYS: job, lease, queue, running, stream
# ARGV: job_id, now, ttl, finished_channel, max_attempts, error_json (worker_lost)
REAP = (
    _FINISH
    + _BACK_TO_QUEUE
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'cancel_requested', 'queue_score')
if not f[1] then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return {'missing', '0'}
end
if f[1] ~= 'running' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return {'skipped', f[1]}
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'alive', f[2] or '0'} end
if f[3] ~= '1' and tonumber(f[2] or '0') >= tonumber(ARGV[5]) then
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('HSET', KEYS[1], 'error', ARGV[6])
  finish(KEYS[1], KEYS[5], ARGV[1], 'failed', ARGV[2], ARGV[3], ARGV[4])
  return {'failed', f[2] or '0'}
end
return back_to_queue(f, 'worker_lost')
"""
)

# KEYS: job, lease, queue, running, stream
# ARGV: job_id, now, ttl, finished_channel, worker_id
RELEASE = (
    _FINISH
    + _BACK_TO_QUEUE
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'cancel_requested', 'queue_score', 'lease_owner')
if f[1] ~= 'running' or f[5] ~= ARGV[5] then return {'not_owner', f[1] or ''} end
-- a job handed back on a clean shutdown does not count as an attempt
redis.call('HINCRBY', KEYS[1], 'attempt', -1)
return back_to_queue(f, 'released')
"""
)

# The worker's stream pump: APPEND (and the cancel read) for all its running jobs in one call.
# KEYS: job_1, stream_1, ..., job_n, stream_n
# ARGV: worker_id, ttl, n, text_1 .. text_n ('' = nothing to write, only the fence and cancel read),
#       seq_1 .. seq_n (see _SEEN)
# Per job: 0 = not the owner (nothing written); else 1 (written, nothing to write, or its seq was
# applied already) or 2 (its XADD failed: nothing written), plus 4 when a cancel was requested.
APPEND_MANY = (
    _SEEN
    + """
local out = {}
local n = tonumber(ARGV[3])
for j = 1, n do
  local job = KEYS[2 * j - 1]
  local f = redis.call('HMGET', job, 'status', 'lease_owner', 'cancel_requested')
  if f[1] ~= 'running' or f[2] ~= ARGV[1] then
    out[j] = 0
  else
    local code = 1
    local text = ARGV[j + 3]
    local seq = tonumber(ARGV[j + 3 + n])
    if text ~= '' and not seen(job, seq) then
      local id = redis.pcall('XADD', KEYS[2 * j], '*', 't', 'token', 'text', text)
      if type(id) == 'table' and id.err then
        code = 2
      else
        redis.call('EXPIRE', KEYS[2 * j], ARGV[2])
        if seq > 0 then redis.call('HSET', job, 'append_seq', seq) end
      end
    end
    if f[3] == '1' then code = code + 4 end
    out[j] = code
  end
end
return out
"""
)

ALL = {
    "create": CREATE,
    "discard": DISCARD,
    "claim": CLAIM,
    "renew": RENEW,
    "append": APPEND,
    "append_many": APPEND_MANY,
    "finish": FINISH,
    "cancel": CANCEL,
    "reap": REAP,
    "release": RELEASE,
}
