-- ack.lua: see the doc comment of `ACK_LUA` in crates/signal/src/hub.rs.
local seats = redis.call('HGETALL', KEYS[1])
local mine
for i = 1, #seats, 2 do
  if seats[i] == ARGV[1] then mine = seats[i + 1] end
end
if not mine or conn_of(mine) ~= ARGV[2] then return 0 end
-- The TTL is set when a participant's first ack adds its field, not at every flush.
if redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
local acked = {}
local kv = redis.call('HGETALL', KEYS[2])
for i = 1, #kv, 2 do acked[kv[i]] = tonumber(kv[i + 1]) end
-- Everything up to the lowest ack of the seated participants was delivered to every one of
-- them (or sent by them); a seat that has acked nothing yet keeps the whole log.
local low
for i = 1, #seats, 2 do
  local n = acked[seats[i]]
  if not n then return 1 end
  if not low or n < low then low = n end
end
if low and low > 0 then
  redis.call('XTRIM', KEYS[3], 'MINID', string.format('%d', low + 1))
end
return 1
