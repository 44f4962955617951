-- KEYS: job, lease, queue, running
-- ARGV: job_id, worker_id, now, lease_ms, ttl
-- A replay of this very call (client retry after the first run's reply was lost) finds the job
-- running for the same worker since the same started_at (``now`` of the call): it won, say so again.
-- A second delivery claimed by the same process carries another ``now`` and still loses.
-- A win also answers created_at (the caller's queue-wait statistic needs no read of its own).
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_owner', 'started_at', 'attempt', 'created_at')
local status = f[1]
if not status then return {'missing', ''} end
if status == 'running' and f[2] == ARGV[2] and f[3] == ARGV[3] then return {'won', f[4], f[5] or ''} end
if status ~= 'queued' then return {'lost', status} end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'lease_owner', ARGV[2], 'started_at', ARGV[3])
-- a new attempt numbers its stream flushes from 1 again (APPEND, APPEND_MANY)
redis.call('HDEL', KEYS[1], 'append_seq')
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[5])
return {'won', tostring(attempt), f[5] or ''}
