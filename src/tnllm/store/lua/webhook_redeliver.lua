-- KEYS: job, bodies, schedule, wake; ARGV: now_ms, ttl, job_id
local cfg = redis.call('HGET', KEYS[1], 'webhook')
if not cfg or cfg == '' then return -1 end
local n = tonumber(redis.call('HGET', KEYS[1], 'wh:n') or '0')
if n == 0 then return -2 end
local body = redis.call('HGET', KEYS[2], tostring(n - 1))
if not body then return -4 end
local last = cjson.decode(redis.call('HGET', KEYS[1], 'wh:d:' .. (n - 1)))
local entry = '{"event":' .. cjson.encode(last['event'])
  .. ',"webhook_id":' .. cjson.encode(last['webhook_id'])
  .. ',"state":"pending","attempts":[],"next_attempt_at":null}'
redis.call('HINCRBY', KEYS[1], 'wh:n', 1)
redis.call('HSET', KEYS[1], 'wh:d:' .. n, entry)
redis.call('HSET', KEYS[2], tostring(n), body)
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3] .. '|' .. n)
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 0)
return n
