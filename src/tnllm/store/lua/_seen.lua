-- Idempotent appends: a writer numbers its flushes (seq 1, 2, ... per attempt; a retried flush keeps
-- its number) and the job's record keeps the last applied one in ``append_seq`` (cleared by CLAIM,
-- so a new attempt starts again). A flush numbered <= append_seq was applied already (a client
-- retry after the reply was lost, or pending text resent): it writes nothing and says so.
-- seq 0 = unnumbered (always written).
local function seen(job, seq)
  return seq > 0 and seq <= tonumber(redis.call('HGET', job, 'append_seq') or '0')
end
