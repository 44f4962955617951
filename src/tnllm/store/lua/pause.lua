-- KEYS: job, queue
-- ARGV: job_id
-- queued -> paused (out of the queue; its score is kept for RESUME); running -> pause requested
-- (its worker parks it: PARK); paused -> paused again (idempotent). Answers {kind, status}.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if status == 'queued' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'paused')
  return {'paused', 'queued'}
end
if status == 'paused' then return {'paused', 'paused'} end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'pause_requested', '1')
  return {'requested', 'running'}
end
return {'terminal', status}
