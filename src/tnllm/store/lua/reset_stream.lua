-- KEYS: job, stream
-- ARGV: worker_id, ttl, reason
-- The owner of a running job voids the text streamed so far (a `reset` entry): its new attempt
-- cannot resume from it (entries without token ids, written by an older version) and starts over.
-- Answers 1, or 0 when the caller does not own the running job (nothing written).
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_owner')
if f[1] ~= 'running' or f[2] ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], '*', 't', 'reset', 'reason', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
