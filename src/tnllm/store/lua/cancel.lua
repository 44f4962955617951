-- KEYS: job, queue, stream
-- ARGV: job_id, now, ttl, finished_channel, cancel_channel
-- A replay of this very call (a client retry after the first run's reply was lost) finds the job
-- cancelled at the same finished_at (``now`` of the call): it cancelled the job, say so again.
-- include: _finish
local f = redis.call('HMGET', KEYS[1], 'status', 'finished_at')
local status = f[1]
if not status then return {'missing', ''} end
if status == 'cancelled' and f[2] == ARGV[2] then return {'cancelled', 'cancelled'} end
if status == 'queued' or status == 'paused' then
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
