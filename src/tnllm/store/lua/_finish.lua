-- Shared by the scripts that make a job terminal: record, stream end marker, TTLs, notification.
local function finish(job, stream, job_id, status, now, ttl, channel)
  redis.call('HSET', job, 'status', status, 'finished_at', now)
  redis.call('XADD', stream, '*', 't', 'done', 'status', status)
  redis.call('EXPIRE', stream, ttl)
  redis.call('EXPIRE', job, ttl)
  redis.call('PUBLISH', channel, job_id)
end
