-- ack.lua: see the doc comment of `ACK_LUA` in crates/signal/src/hub.rs.
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v or conn_of(v) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local acked = {}
local kv = redis.call('HGETALL', KEYS[2])
for i = 1, #kv, 2 do acked[kv[i]] = tonumber(kv[i + 1]) end
-- Everything up to the lowest ack of the seated participants was delivered to every one of
-- them (or sent by them); a seat that has acked nothing yet keeps the whole log.
local low
for _, p in ipairs(redis.call('HKEYS', KEYS[1])) do
  local n = acked[p]
  if not n then return 1 end
  if not low or n < low then low = n end
end
if low and low > 0 then
  redis.call('XTRIM', KEYS[3], 'MINID', string.format('%d', low + 1))
end
return 1
