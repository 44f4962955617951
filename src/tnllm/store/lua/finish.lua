-- KEYS: job, lease, running, stream
-- ARGV: job_id, worker_id, status, now, result_json ('' = none), error_json ('' = none), ttl, channel
-- include: _finish
-- the answer carries started_at and owner, for the caller's statistics (no read of its own)
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_owner', 'finished_at', 'started_at', 'owner')
-- a replay of this very call (same owner, status and finished_at = now): it was written, say so
if f[1] == ARGV[3] and f[2] == ARGV[2] and f[3] == ARGV[4] then return {1, ARGV[3], f[4] or '', f[5] or ''} end
if f[1] ~= 'running' or f[2] ~= ARGV[2] then return {0, f[1] or ''} end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[6]) end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
finish(KEYS[1], KEYS[4], ARGV[1], ARGV[3], ARGV[4], ARGV[7], ARGV[8])
return {1, ARGV[3], f[4] or '', f[5] or ''}
