-- KEYS: job, stream
-- ARGV: worker_id, ttl, seq, deltas, ids, text...  (deltas: the 'd' field, per-choice deltas as JSON
--       from entries.pack_deltas, of a single text's entry; '' = plain text entries. ids: choice
--       0's token ids (comma-separated, '' = none) the texts came from, stored with the last entry,
--       so a requeued job resumes from what it streamed: docs/STATE.md)
-- Answers the entry ids; {} = not the owner (nothing written); {'applied'} = seq applied already.
-- include: _seen
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_owner')
if f[1] ~= 'running' or f[2] ~= ARGV[1] then return {} end
local seq = tonumber(ARGV[3])
if seen(KEYS[1], seq) then return {'applied'} end
local ids = {}
for i = 6, #ARGV do
  local fields = {'t', 'token', 'text', ARGV[i]}
  if i == #ARGV then
    if ARGV[4] ~= '' then
      fields[#fields + 1] = 'd'
      fields[#fields + 1] = ARGV[4]
    end
    if ARGV[5] ~= '' then
      fields[#fields + 1] = 'ids'
      fields[#fields + 1] = ARGV[5]
    end
  end
  ids[#ids + 1] = redis.call('XADD', KEYS[2], '*', unpack(fields))
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
-- tokens streamed so far (ETAs): one more than the commas
if ARGV[5] ~= '' then redis.call('HINCRBY', KEYS[1], 'tokens', select(2, ARGV[5]:gsub(',', '')) + 1) end
if seq > 0 then redis.call('HSET', KEYS[1], 'append_seq', seq) end
return ids
