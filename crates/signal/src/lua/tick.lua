-- tick.lua: see the doc comment of `TICK_LUA` in crates/signal/src/hub.rs.
local now, grace, ttl, log_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
-- The TTLs (a day for the seats, minutes for the log) are renewed every few rounds, not at
-- every one: each renewal is a command per call per replica.
local renew_ttls = ARGV[5] == '1'
local function tick(kcall, kpeers, kchan, ksenders, seen, first, count)
  local status = redis.call('HGET', kcall, 'status')
  if status == 'ended' then return {'ended'} end
  if not status then
    redis.call('HSET', kcall, 'status', 'active', 'createdAt', string.format('%.0f', math.floor(now / 1000)))
    redis.call('EXPIRE', kcall, ttl)
  end
  local entries = redis.call('HGETALL', kpeers)
  local seats = {}
  for i = 1, #entries, 2 do seats[entries[i]] = entries[i + 1] end
  local mine = {}
  -- The safety net for pub/sub loss: does a seated sender's log hold an entry above the last
  -- number this replica saw published from it (`seen`: 'pid:seq,…')? An empty range costs
  -- Redis little; an emptied log (everything acked) has none.
  local prefix = string.sub(kpeers, 1, -7) .. ':log:'
  local given = {}
  for p, n in string.gmatch(seen, '(%w+):(%d+)') do given[p] = n end
  -- Only logs some local connection reads: not the log of this replica's only local
  -- participant (in a call across two replicas, one log per replica, not two).
  local only
  for i = first, first + 3 * (count - 1), 3 do
    if only == nil then only = ARGV[i] elseif only ~= ARGV[i] then only = false end
  end
  -- The answer names the sender and the number found ('pid:seq'): the replica resyncs only if
  -- its router still has not seen that number a moment later (a relay published between the
  -- replica's snapshot and this run is not a loss).
  local behind = 0
  for i = 1, #entries, 2 do
    local p = entries[i]
    if p ~= only and not is_observer(entries[i + 1]) then
      local after = '(' .. (given[p] or '0') .. '-0'
      local found = redis.call('XRANGE', prefix .. p, after, '+', 'COUNT', '1')
      if #found > 0 then
        behind = p .. ':' .. string.match(found[1][1], '^(%d+)')
        break
      end
    end
  end
  local reply = {'ok', behind}
  local renewed, created = false, false
  for i = first, first + 3 * (count - 1), 3 do
    local pid, conn = ARGV[i], ARGV[i + 1]
    mine[pid] = true
    local v = seats[pid]
    if v and conn_of(v) ~= conn then
      reply[#reply + 1] = pid .. '|' .. conn
    else
      -- A seat Redis lost (restart) is written again, and its hash gets its TTL now.
      if redis.call('HSET', kpeers, pid, ARGV[i + 2]) == 1 then created = true end
      renewed = true
    end
  end
  for i = 1, #entries, 2 do
    local p, v = entries[i], entries[i + 1]
    if not mine[p] then
      local role, state, exp = string.match(v, '^(%a+)|(%a)|(%d+)|')
      exp = tonumber(exp)
      local left = false
      if not role then
        redis.call('HDEL', kpeers, p)
      elseif state == 'L' and exp < now then
        if exp + grace >= now then
          redis.call('HSET', kpeers, p, role .. '|A|' .. string.format('%.0f', exp + grace) .. '|' .. conn_of(v))
          if role ~= 'observer' then
            redis.call(PUBLISH, kchan, frame('peer-reconnecting', p))
          end
        else
          left = true
        end
      elseif state == 'A' and exp < now then
        left = true
      end
      if left then
        redis.call('HDEL', kpeers, p)
        if role ~= 'observer' then
          redis.call(PUBLISH, kchan, frame('peer-left', p, 'reason', 'timeout'))
        end
      end
    end
  end
  if renew_ttls or created then redis.call('EXPIRE', kpeers, ttl) end
  -- A renewed lease keeps the call's logs (relays set their TTL only every 64th number).
  if renewed and renew_ttls then
    for _, s in ipairs(redis.call('SMEMBERS', ksenders)) do
      redis.call('PEXPIRE', prefix .. s, log_ttl)
    end
    redis.call('EXPIRE', ksenders, ttl)
  end
  return reply
end
local out = {}
local a = 6
for c = 1, #KEYS / 4 do
  local k = (c - 1) * 4
  local count = tonumber(ARGV[a + 1])
  out[c] = tick(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], ARGV[a], a + 2, count)
  a = a + 2 + 3 * count
end
return out
