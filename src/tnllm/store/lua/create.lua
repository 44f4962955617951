-- KEYS: job, owner_jobs, queue, idem (a placeholder key when unused), then the broker keys
-- ARGV: job_id, ttl, max_queued (0 = none), created_us, queue_score, idem_value ('' = none),
--       idem_ttl, prune_before_us, n broker commands, then n triples (name, target, value): name
--       lpush or pexpire with target the index of its key in KEYS, or publish with target the
--       channel; then field/value pairs of the record
-- The broker commands publish the job's Celery message (as kombu would): written with the record,
-- so a created job always has its message and a replayed or refused one never gets a second.
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
local n = tonumber(ARGV[9])
redis.call('HSET', KEYS[1], unpack(ARGV, 10 + 3 * n))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[8])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[2])
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[7])
end
for i = 0, n - 1 do
  local name, target, value = ARGV[10 + 3 * i], ARGV[11 + 3 * i], ARGV[12 + 3 * i]
  if name == 'publish' then
    redis.call('PUBLISH', target, value)
  else
    redis.call(name, KEYS[tonumber(target)], value)
  end
end
return {'created', ARGV[1], tostring(redis.call('ZRANK', KEYS[3], ARGV[1]))}
