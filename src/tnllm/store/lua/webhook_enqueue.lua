-- KEYS: job, bodies, schedule, wake; ARGV: event, entry, body, now_ms, ttl, once (1|0), job_id
local cfg = redis.call('HGET', KEYS[1], 'webhook')
if not cfg or cfg == '' then return -1 end
local subscribed = false
for _, e in ipairs(cjson.decode(cfg)['events'] or {}) do if e == ARGV[1] then subscribed = true end end
if not subscribed then return -2 end
if ARGV[6] == '1' and redis.call('HSETNX', KEYS[1], 'wh:once:' .. ARGV[1], '1') == 0 then return -3 end
local i = redis.call('HINCRBY', KEYS[1], 'wh:n', 1) - 1
redis.call('HSET', KEYS[1], 'wh:d:' .. i, ARGV[2])
redis.call('HSET', KEYS[2], tostring(i), ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[7] .. '|' .. i)
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 0)
return i
