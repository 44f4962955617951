-- due members -> leased for ARGV[2] ms under a fresh token; returns {member, token, member, token, ...}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, m in ipairs(due) do
  local token = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[3], m, token)
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), m)
  out[#out + 1] = m
  out[#out + 1] = tostring(token)
end
return out
