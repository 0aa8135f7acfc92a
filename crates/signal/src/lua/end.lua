-- end.lua: see the doc comment of `END_LUA` in crates/signal/src/hub.rs.
local was = redis.call('HGET', KEYS[1], 'status')
local fresh = was ~= 'ended'
if fresh then
  redis.call('HSET', KEYS[1], 'status', 'ended', 'endedAt', ARGV[1])
  if not was then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
end
-- Every sender's log: a relay of the call finds its log gone, and then the status.
for _, s in ipairs(redis.call('SMEMBERS', KEYS[6])) do redis.call('DEL', ARGV[5] .. s) end
redis.call('DEL', KEYS[2], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
if fresh and ARGV[3] == '1' then redis.call(PUBLISH, KEYS[3], ARGV[2]) end
if fresh then return 1 end
return 0
