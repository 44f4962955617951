-- KEYS: job, lease, queue, running, stream
-- ARGV: job_id, now, ttl, finished_channel, worker_id
-- The owner of a running job whose pause was requested takes it out of its slot: status paused
-- (no lease, not queued; the attempt is not counted). RESUME queues it again and the next attempt
-- goes on from the token ids the stream holds. A pause withdrawn meanwhile (RESUME cleared the
-- flag) requeues it instead; a pending cancel ends it.
-- include: _finish
-- include: _back_to_queue
local f = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'cancel_requested', 'queue_score', 'lease_owner',
  'pause_requested')
if f[1] ~= 'running' or f[5] ~= ARGV[5] then return {'not_owner', f[1] or ''} end
redis.call('HINCRBY', KEYS[1], 'attempt', -1)
if f[3] == '1' or f[6] ~= '1' then return back_to_queue(f) end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'paused', 'lease_owner', '', 'started_at', '', 'pause_requested', '0')
return {'paused', f[2] or '0'}
