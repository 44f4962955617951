-- The worker's stream pump: APPEND (and the cancel and pause reads) for all its running jobs in one call.
-- KEYS: job_1, stream_1, ..., job_n, stream_n
-- ARGV: worker_id, ttl, n, text_1 .. text_n, seq_1 .. seq_n (see _seen.lua), ids_1 .. ids_n (choice
--       0's token ids of each text, comma-separated; text and ids both '' = nothing to write, only
--       the fence and the flag reads), then optionally deltas_1 .. deltas_n (the entry's 'd' field:
--       per-choice deltas as JSON, entries.pack_deltas; '' = a plain text entry)
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
    local deltas = ARGV[j + 3 + 3 * n] or ''
    if (text ~= '' or tokens ~= '' or deltas ~= '') and not seen(job, seq) then
      local fields = {'t', 'token', 'text', text}
      if deltas ~= '' then
        fields[#fields + 1] = 'd'
        fields[#fields + 1] = deltas
      end
      if tokens ~= '' then
        fields[#fields + 1] = 'ids'
        fields[#fields + 1] = tokens
      end
      local id = redis.pcall('XADD', KEYS[2 * j], '*', unpack(fields))
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
