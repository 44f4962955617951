-- KEYS: job, lease, queue, running, stream
-- ARGV: job_id, now, ttl, finished_channel, worker_id
-- include: _finish
-- include: _back_to_queue
local f = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'cancel_requested', 'queue_score', 'lease_owner')
if f[1] ~= 'running' or f[5] ~= ARGV[5] then return {'not_owner', f[1] or ''} end
-- a job handed back on a clean shutdown does not count as an attempt
redis.call('HINCRBY', KEYS[1], 'attempt', -1)
return back_to_queue(f)
