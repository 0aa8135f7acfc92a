-- join.lua: see the doc comment of `JOIN_LUA` in crates/signal/src/hub.rs.
local now, grace = tonumber(ARGV[4]), tonumber(ARGV[6])
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'ended' then return {'ended'} end
local entries = redis.call('HGETALL', KEYS[2])
local media, prev, prevconn = 0, 'none', ''
local out = {}
local gone = {}
for i = 1, #entries, 2 do
  local p, v = entries[i], entries[i + 1]
  local role, pres = presence(v, now, grace)
  if p == ARGV[1] then
    prev, prevconn = pres, conn_of(v)
  elseif pres == 'gone' then
    gone[#gone + 1] = {p, role}
  elseif role ~= 'observer' then
    -- Observers take no seat and are nobody's peer: the snapshot lists media participants.
    media = media + 1
    out[#out + 1] = p .. '|' .. role .. '|' .. pres
  end
end
if ARGV[2] ~= 'observer' and media >= tonumber(ARGV[8]) then return {'full'} end
for _, g in ipairs(gone) do
  local p = g[1]
  redis.call('HDEL', KEYS[2], p)
  if g[2] ~= 'observer' then
    redis.call(PUBLISH, KEYS[3], frame('peer-left', p, 'reason', 'timeout'))
  end
end
local media_self = ARGV[2] ~= 'observer'
if not status then
  redis.call('HSET', KEYS[1], 'status', 'active', 'createdAt', string.format('%.0f', math.floor(now / 1000)))
  redis.call('EXPIRE', KEYS[1], ARGV[7])
elseif status ~= 'active' then
  redis.call('HSET', KEYS[1], 'status', 'active')
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[7])
if prev == 'live' and prevconn ~= ARGV[3] then
  redis.call(PUBLISH, KEYS[3], frame('replaced', ARGV[1], 'conn', ARGV[3]))
end
local resumed = 0
if ARGV[9] ~= '' and (prev == 'live' or prev == 'away') then
  resumed = 1
  if prev == 'away' and media_self then
    redis.call(PUBLISH, KEYS[3], frame('peer-resumed', ARGV[1]))
  end
else
  if media_self then
    if prev == 'live' or prev == 'away' then
      -- A fresh join over a seat this participant still held: the others hear one story,
      -- the old seat left and a new one joined (renegotiate), never a second peer-joined.
      redis.call(PUBLISH, KEYS[3], frame('peer-left', ARGV[1], 'reason', 'rejoined'))
    end
    redis.call(PUBLISH, KEYS[3], frame('peer-joined', ARGV[1], 'role', ARGV[2]))
  end
end
-- The seam: presence events a subscriber sees before this one are in the reply's snapshot.
redis.call(PUBLISH, KEYS[3], frame('seat', ARGV[1], 'conn', ARGV[3]))
local seq = redis.call('GET', KEYS[4]) or '0'
local after = seq
if resumed == 1 and tonumber(ARGV[9]) <= tonumber(seq) then after = ARGV[9] end
local reply = {'ok', resumed, seq, after}
for _, o in ipairs(out) do reply[#reply + 1] = o end
return reply
