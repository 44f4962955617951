-- KEYS: job, lease
-- ARGV: worker_id, lease_ms
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_owner', 'cancel_requested')
if f[1] ~= 'running' or f[2] ~= ARGV[1] then return {0, 0} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if f[3] == '1' then return {1, 1} end
return {1, 0}
