-- The worker's stream pump: APPEND (and the cancel read) for all its running jobs in one call.
-- KEYS: job_1, stream_1, ..., job_n, stream_n
-- ARGV: worker_id, ttl, n, text_1 .. text_n ('' = nothing to write, only the fence and cancel read),
--       seq_1 .. seq_n (see _seen.lua), then optionally deltas_1 .. deltas_n (the entry's 'd' field:
--       per-choice deltas as JSON, entries.pack_deltas; '' = a plain text entry)
-- Per job: 0 = not the owner (nothing written); else 1 (written, nothing to write, or its seq was
-- applied already) or 2 (its XADD failed: nothing written), plus 4 when a cancel was requested.
-- include: _seen
local out = {}
local n = tonumber(ARGV[3])
for j = 1, n do
  local job = KEYS[2 * j - 1]
  local f = redis.call('HMGET', job, 'status', 'lease_owner', 'cancel_requested')
  if f[1] ~= 'running' or f[2] ~= ARGV[1] then
    out[j] = 0
  else
    local code = 1
    local text = ARGV[j + 3]
    local seq = tonumber(ARGV[j + 3 + n])
    local deltas = ARGV[j + 3 + 2 * n] or ''
    if (text ~= '' or deltas ~= '') and not seen(job, seq) then
      local id
      if deltas == '' then
        id = redis.pcall('XADD', KEYS[2 * j], '*', 't', 'token', 'text', text)
      else
        id = redis.pcall('XADD', KEYS[2 * j], '*', 't', 'token', 'text', text, 'd', deltas)
      end
      if type(id) == 'table' and id.err then
        code = 2
      else
        redis.call('EXPIRE', KEYS[2 * j], ARGV[2])
        if seq > 0 then redis.call('HSET', job, 'append_seq', seq) end
      end
    end
    if f[3] == '1' then code = code + 4 end
    out[j] = code
  end
end
return out
