-- record an attempt and reschedule (ARGV[5] = next due ms) or finish (ARGV[5] = ''), if still leased
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('ZREM', KEYS[1], ARGV[1]) return -1 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
if ARGV[5] == '' then redis.call('ZREM', KEYS[1], ARGV[1])
else redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1]) end
return 1
