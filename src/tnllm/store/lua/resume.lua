-- KEYS: job, queue
-- ARGV: job_id, ttl
-- paused -> queued at its old place (the caller then sends a Celery message); running with a
-- pause requested -> the request withdrawn; anything else is not paused. Answers {kind, status}.
local f = redis.call('HMGET', KEYS[1], 'status', 'queue_score', 'pause_requested')
if not f[1] then return {'missing', ''} end
if f[1] == 'paused' then
  redis.call('HSET', KEYS[1], 'status', 'queued')
  redis.call('ZADD', KEYS[2], f[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return {'queued', 'paused'}
end
if f[1] == 'running' and f[3] == '1' then
  redis.call('HSET', KEYS[1], 'pause_requested', '0')
  return {'running', 'running'}
end
return {'not_paused', f[1]}
