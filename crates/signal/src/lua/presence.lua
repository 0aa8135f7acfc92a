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
