-- Puts a running job back in the queue (or ends it when its cancel was requested). Shared tail of
-- REAP and RELEASE. Expects `f` = HMGET status, attempt, cancel_requested, queue_score.
-- No `reset` goes to the stream: the next attempt resumes from the token ids the stream holds (a
-- worker that cannot resume writes the reset itself, RESET_STREAM).
local function back_to_queue(f)
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[4], ARGV[1])
  if f[3] == '1' then
    finish(KEYS[1], KEYS[5], ARGV[1], 'cancelled', ARGV[2], ARGV[3], ARGV[4])
    return {'cancelled', f[2] or '0'}
  end
  redis.call('HSET', KEYS[1], 'status', 'queued', 'lease_owner', '', 'started_at', '')
  redis.call('ZADD', KEYS[3], f[4], ARGV[1])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  return {'requeued', f[2] or '0'}
end
