-- leave.lua: see the doc comment of `LEAVE_LUA` in crates/signal/src/hub.rs.
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v or conn_of(v) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if not is_observer(v) then
  redis.call(PUBLISH, KEYS[2], frame('peer-left', ARGV[1], 'reason', ARGV[3]))
end
return 1
