-- KEYS: job, lease, queue, running, stream
-- ARGV: job_id, now, ttl, finished_channel, max_attempts, error_json (worker_lost)
-- include: _finish
-- include: _back_to_queue
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
return back_to_queue(f)
