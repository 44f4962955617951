-- a task takes over the lease it was dispatched with (new token, ARGV[3] = lease end); false if stale
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return false end
local token = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[2], ARGV[1], token)
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return tostring(token)
