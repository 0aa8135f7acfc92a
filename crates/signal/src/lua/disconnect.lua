-- disconnect.lua: see the doc comment of `DISCONNECT_LUA` in crates/signal/src/hub.rs.
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v or conn_of(v) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if not is_observer(v) then
  redis.call(PUBLISH, KEYS[2], frame('peer-reconnecting', ARGV[1]))
end
return 1
