-- relay.lua: see the doc comment of `RELAY_LUA` in crates/signal/src/hub.rs.
local maxlen, inbox_ttl, ttl, epochs = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local function relay(kpeers, kseq, kchan, kcall, kepoch, a)
  local from, conn, head, tail, prefix = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 5]
  if redis.call('HGET', kcall, 'status') == 'ended' then return -2 end
  local entries = redis.call('HGETALL', kpeers)
  local mine
  local to = {}
  for i = 1, #entries, 2 do
    if entries[i] == from then mine = entries[i + 1] else to[entries[i]] = true end
  end
  if mine then
    if conn_of(mine) ~= conn then return -1 end
  else
    redis.call('HSET', kpeers, from, ARGV[a + 6])
  end
  -- Failover (under Sentinel): a primary that died may have issued (and delivered) numbers it
  -- never replicated. When the primary changed since this call's last relay (another
  -- replication id), jump past any of them, so no receiver ever sees a number twice
  -- (docs/operations.md).
  if epochs then
    local epoch = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or ''
    if redis.call('GET', kepoch) ~= epoch then
      if tonumber(redis.call('GET', kseq) or '0') > 0 then redis.call('INCRBY', kseq, 1000000) end
      redis.call('SET', kepoch, epoch, 'EX', ttl)
    end
  end
  -- The next number, never below what the sender has seen, so a Redis that lost the counter
  -- does not reuse numbers.
  local seq = redis.call('INCR', kseq)
  local floor = tonumber(ARGV[a + 4])
  if seq <= floor then
    seq = floor + 1
    redis.call('SET', kseq, string.format('%d', seq))
    redis.call('EXPIRE', kseq, ttl)
  elseif seq % 64 == 1 then
    redis.call('EXPIRE', kseq, ttl)
  end
  -- Lua's own number-to-string conversion prints 1e+15; '%d' always gives the integer.
  local n = string.format('%d', seq)
  local id = n .. '-1'
  local msg = head .. n .. tail
  -- Peers the sender knows of, in case Redis lost the seats (restart) and their replicas
  -- have not rewritten them yet.
  for i = a + 8, a + 7 + tonumber(ARGV[a + 7]) do
    if ARGV[i] ~= from then to[ARGV[i]] = true end
  end
  local written = {}
  for p, _ in pairs(to) do
    local k = prefix .. p
    local created = false
    local r = redis.pcall('XADD', k, 'NOMKSTREAM', 'MAXLEN', '~', maxlen, id, 'm', msg)
    if not r then
      created = true
      r = redis.pcall('XADD', k, 'MAXLEN', '~', maxlen, id, 'm', msg)
    end
    if type(r) == 'table' and r.err then
      -- Not sent: take it back from the inboxes already written, and lift the counter above
      -- this inbox's newest entry (left by a partial data loss) so the resend fits.
      for _, w in ipairs(written) do redis.call('XDEL', w, id) end
      local top = redis.pcall('XREVRANGE', k, '+', '-', 'COUNT', 1)
      if type(top) == 'table' and top[1] then
        local t = string.match(top[1][1], '^(%d+)-')
        if t and tonumber(t) >= seq then redis.call('SET', kseq, t) end
      end
      return 'inbox write failed: ' .. tostring(r.err)
    end
    written[#written + 1] = k
    if created then redis.call('PEXPIRE', k, inbox_ttl) end
  end
  redis.call('PUBLISH', kchan, msg)
  return seq
end
local out = {}
local a = 5
for r = 1, #KEYS / 5 do
  local k = (r - 1) * 5
  out[r] = relay(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], a)
  a = a + 8 + tonumber(ARGV[a + 7])
end
return out
