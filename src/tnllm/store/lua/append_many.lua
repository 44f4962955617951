-- The worker's stream pump: APPEND (and the cancel and pause reads) for all its running jobs in one call.
-- KEYS: job_1, stream_1, ..., job_n, stream_n
-- ARGV: worker_id, ttl, n, text_1 .. text_n, seq_1 .. seq_n (see _seen.lua), ids_1 .. ids_n (the
--       token ids of each text, comma-separated; text and ids both '' = nothing to write, only the
--       fence and the flag reads)
-- Per job: 0 = not the owner (nothing written); else 1 (written, nothing to write, or its seq was
-- applied already) or 2 (its XADD failed: nothing written), plus 4 when a cancel was requested and
-- 8 when a pause was requested.
-- include: _seen
local out = {}
local n = tonumber(ARGV[3])
for j = 1, n do
  local job = KEYS[2 * j - 1]
  local f = redis.call('HMGET', job, 'status', 'lease_owner', 'cancel_requested', 'pause_requested')
  if f[1] ~= 'running' or f[2] ~= ARGV[1] then
    out[j] = 0
  else
    local code = 1
    local text = ARGV[j + 3]
    local seq = tonumber(ARGV[j + 3 + n])
    local tokens = ARGV[j + 3 + 2 * n] or ''
    if (text ~= '' or tokens ~= '') and not seen(job, seq) then
      local id
      if tokens ~= '' then
        id = redis.pcall('XADD', KEYS[2 * j], '*', 't', 'token', 'text', text, 'ids', tokens)
      else
        id = redis.pcall('XADD', KEYS[2 * j], '*', 't', 'token', 'text', text)
      end
      if type(id) == 'table' and id.err then
        code = 2
      else
        redis.call('EXPIRE', KEYS[2 * j], ARGV[2])
        if seq > 0 then redis.call('HSET', job, 'append_seq', seq) end
        -- tokens streamed so far (ETAs): one more than the commas
        if tokens ~= '' then redis.call('HINCRBY', job, 'tokens', select(2, tokens:gsub(',', '')) + 1) end
      end
    end
    if f[3] == '1' then code = code + 4 end
    if f[4] == '1' then code = code + 8 end
    out[j] = code
  end
end
return out
