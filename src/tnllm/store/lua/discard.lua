-- KEYS: job, owner_jobs, queue, idem (placeholder when unused)
-- ARGV: job_id, idem_value ('' = none)
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[2] ~= '' and redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
return 1
