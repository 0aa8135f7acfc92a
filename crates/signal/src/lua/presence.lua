-- presence.lua: see the doc comment of `PRESENCE_LUA` in crates/signal/src/hub.rs.
local function presence(v, now, grace)
  local role, state, exp = string.match(v, '^(%a+)|(%a)|(%d+)|')
  if not role then return nil, 'gone' end
  exp = tonumber(exp)
  if state == 'L' and exp >= now then return role, 'live' end
  if (state == 'L' and exp + grace >= now) or (state == 'A' and exp >= now) then return role, 'away' end
  return role, 'gone'
end
local function conn_of(v) return string.match(v, '^%a+|%a|%d+|(.*)$') or '' end
-- Observers take no seat and are invisible: no presence event is ever published about one.
local function is_observer(v) return string.sub(v, 1, 9) == 'observer|' end
-- A frame for the call channel, one of hermes-proto's `ServerMessage` presence events or
-- `CallControl` frames: `{type, participantId[, field = value]}`, encoded by cjson, never by
-- concatenation (tests/channel_contract.rs decodes every published frame strictly).
local function frame(kind, pid, field, value)
  local t = {type = kind, participantId = pid}
  if field then t[field] = value end
  return cjson.encode(t)
end
-- The last id a sender log ever issued (a stream keeps it when trimmed empty), as a number;
-- nil when the log does not exist.
local function log_top(klog)
  local info = redis.pcall('XINFO', 'STREAM', klog)
  if type(info) ~= 'table' or info.err then return nil end
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return tonumber(string.match(info[i + 1], '^(%d+)-'))
    end
  end
  return nil
end
