-- Per-key limits of one submission, checked and counted in one step (every API process shares them).
-- KEYS: rate (zset of this key's submissions, scored by time), usage (completion tokens of today)
-- ARGV: now (epoch s), member (the new job id), rate_limit (0 = off), window_s, token_quota (0 = off)
-- Answer: {verdict ('ok' | 'rate' | 'tokens'), submissions in the window, seconds until the oldest
--          leaves it, tokens used today}; numbers as strings (Lua numbers would be truncated).
local now, limit, window, quota = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local used = 0
if quota > 0 then
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
end
local count, oldest = 0, now
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  count = redis.call('ZCARD', KEYS[1])
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if first[2] then oldest = tonumber(first[2]) end
end
local reset = tostring(math.max(0, oldest + window - now))
-- a refusal counts nothing: only admitted submissions fill the window
if quota > 0 and used >= quota then return {'tokens', tostring(count), reset, tostring(used)} end
if limit > 0 then
  if count >= limit then return {'rate', tostring(count), reset, tostring(used)} end
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
  count = count + 1
end
return {'ok', tostring(count), reset, tostring(used)}
