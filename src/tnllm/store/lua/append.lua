-- KEYS: job, stream
-- ARGV: worker_id, ttl, seq, deltas, text...  (deltas: the 'd' field, per-choice deltas as JSON from
--       entries.pack_deltas, of a single text's entry; '' = plain text entries)
-- Answers the entry ids; {} = not the owner (nothing written); {'applied'} = seq applied already.
-- include: _seen
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_owner')
if f[1] ~= 'running' or f[2] ~= ARGV[1] then return {} end
local seq = tonumber(ARGV[3])
if seen(KEYS[1], seq) then return {'applied'} end
local ids = {}
if ARGV[4] ~= '' then
  ids[1] = redis.call('XADD', KEYS[2], '*', 't', 'token', 'text', ARGV[5], 'd', ARGV[4])
else
  for i = 5, #ARGV do
    ids[#ids + 1] = redis.call('XADD', KEYS[2], '*', 't', 'token', 'text', ARGV[i])
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
if seq > 0 then redis.call('HSET', KEYS[1], 'append_seq', seq) end
return ids
