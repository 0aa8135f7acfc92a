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
-- Each sender's log is read by the other seated media participants: everything up to the
-- lowest of their acks was delivered to each of them. A reader that has acked nothing yet
-- keeps the whole log. An observer's one number does not say which sender it counts (it
-- receives from two), so observers do not trim: the cap bounds what they find on a resume.
for _, s in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local low
  local keep = false
  for i = 1, #seats, 2 do
    local p = seats[i]
    if p ~= s and not is_observer(seats[i + 1]) then
      local n = acked[p]
      if not n then keep = true break end
      if not low or n < low then low = n end
    end
  end
  if not keep and low and low > 0 then
    redis.call('XTRIM', ARGV[5] .. s, 'MINID', string.format('%d', low + 1))
  end
end
return 1
