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
-- The senders' logs: each one's last id, and where this connection's delivery from it starts
-- (a fresh join: after its last id; a resume: after lastSeq, clamped to that last id, so a
-- number Redis never issued is never used).
local prefix = ARGV[12]
local per_sender = ARGV[13] ~= ''
local given = {}
for p, n in string.gmatch(ARGV[13], '(%w+):(%d+)') do given[p] = tonumber(n) end
local senders = redis.call('SMEMBERS', KEYS[4])
local top_self, top_all = log_top(KEYS[5]) or 0, 0
local positions = {}
for _, s in ipairs(senders) do
  local top = log_top(prefix .. s) or 0
  if top > top_all then top_all = top end
  if s ~= ARGV[1] then
    local at = top
    if resumed == 1 then
      local want = tonumber(ARGV[9])
      if per_sender then want = given[s] or 0 end
      if want < top then at = want end
    end
    positions[#positions + 1] = s
    positions[#positions + 1] = string.format('%d', at)
  end
end
-- This connection's first number (media only; observers relay nothing). Above everything any
-- receiver of the call was sent (a participant taking a seat another left numbers above what
-- the other's receiver saw), and above the next number of a connection this one replaces:
-- the log's last id moves there, so that connection's next XADD is refused (the fence).
local next_seq = 0
local fence = nil
if media_self then
  local floor = top_all
  if prev == 'live' or prev == 'away' then floor = math.max(floor, top_self + 1) end
  -- Failover (Sentinel, Cluster): a primary that died may have issued numbers it never
  -- replicated. The first join on another primary (another replication id) jumps past them.
  if ARGV[10] == '1' then
    local epoch = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or ''
    if redis.call('GET', KEYS[6]) ~= epoch then
      if floor > 0 then floor = floor + 1000000 end
      redis.call('SET', KEYS[6], epoch, 'EX', ARGV[7])
    end
  end
  if prev == 'live' or prev == 'away' then
    -- The receivers' side of the fence: numbers above the last entry the log holds and below
    -- this connection's first one can only come from a replaced connection whose XADD the
    -- fence refused (its PUBLISH follows in the same pipeline, after this script's `seat`).
    local last = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)
    local stored = 0
    if #last > 0 then stored = tonumber(string.match(last[1][1], '^(%d+)-')) end
    fence = string.format('%d:%d', stored, floor + 1)
    -- Kept with the seats, the newest few per sender: a replica that starts following the
    -- call after this marker gets it from its session's join (the reply, below).
    local kept = {}
    for f in string.gmatch(redis.call('HGET', KEYS[7], ARGV[1]) or '', '[^,]+') do
      kept[#kept + 1] = f
    end
    kept[#kept + 1] = fence
    while #kept > tonumber(ARGV[14]) do table.remove(kept, 1) end
    redis.call('HSET', KEYS[7], ARGV[1], table.concat(kept, ','))
    redis.call('EXPIRE', KEYS[7], ARGV[7])
  end
  local exists = redis.call('EXISTS', KEYS[5]) == 1
  if not exists then
    -- NOMKSTREAM on the hot path: the log exists from the join on (an emptied one keeps its
    -- last id), and its last id is the floor.
    redis.call('XADD', KEYS[5], 'MAXLEN', '0', string.format('%d-1', floor), 'f', '')
  elseif floor > top_self then
    redis.call('XSETID', KEYS[5], string.format('%d-1', floor))
  end
  redis.call('PEXPIRE', KEYS[5], ARGV[11])
  if redis.call('SADD', KEYS[4], ARGV[1]) == 1 then redis.call('EXPIRE', KEYS[4], ARGV[7]) end
  next_seq = floor + 1
end
-- The seam: presence events a subscriber sees before this one are in the reply's snapshot.
local seat = {type = 'seat', participantId = ARGV[1], conn = ARGV[3]}
if fence then seat.fence = fence end
redis.call(PUBLISH, KEYS[3], cjson.encode(seat))
-- The call's fences (this one's included), for the new connection and its replica's router.
local fences = {}
local kept = redis.call('HGETALL', KEYS[7])
for i = 1, #kept, 2 do
  for f in string.gmatch(kept[i + 1], '[^,]+') do fences[#fences + 1] = kept[i] .. ':' .. f end
end
local reply = {'ok', resumed, string.format('%d', next_seq), #positions / 2, table.concat(fences, ',')}
for _, p in ipairs(positions) do reply[#reply + 1] = p end
for _, o in ipairs(out) do reply[#reply + 1] = o end
return reply
