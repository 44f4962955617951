-- KEYS: clock, grace
-- ARGV: gap_ms, grace_ms, clock_ttl_s
-- Every reaper round of every worker calls this first. The clock holds the server time (ms) of
-- the last call; a call that finds it older than gap_ms knows no reaper reached Redis for a while
-- (Redis was down or unreachable): leases that expired meanwhile say nothing about their workers,
-- so reaping waits grace_ms, time for live workers to renew them. Server time, so that lease
-- expiry (PX, server clock) and the gap are measured on the same clock. Answer: grace ms left
-- (<= 0: the reaper may act).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[1]) or '')
redis.call('SET', KEYS[1], string.format('%d', now), 'EX', ARGV[3])
if last and now - last > tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], string.format('%d', now - last), 'PX', ARGV[2])
end
return redis.call('PTTL', KEYS[2])
