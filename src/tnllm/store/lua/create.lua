-- KEYS: job, owner_jobs, queue, idem (a placeholder key when unused)
-- ARGV: job_id, ttl, max_queued (0 = none), created_us, queue_score, idem_value ('' = none),
--       idem_ttl, prune_before_us, then field/value pairs of the record
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
