-- relay.lua: see the doc comment of `RELAY_LUA` in crates/signal/src/hub.rs.
local cap, log_ttl, ttl, epochs = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
-- The last id the log ever issued (kept by the stream even when trimmed empty), as a number.
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
local function relay(kpeers, kseq, kchan, kcall, kepoch, klog, a)
  local from, conn, head, tail = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  -- The seat check reads one field: the log needs no list of recipients.
  local mine = redis.call('HGET', kpeers, from)
  if mine then
    if conn_of(mine) ~= conn then return -1 end
  else
    -- No seat: the call ended (every script that ends a call drops its seats in the same
    -- step), or Redis lost the seats (restart) and this relay rewrites its own.
    if redis.call('HGET', kcall, 'status') == 'ended' then return -2 end
    redis.call('HSET', kpeers, from, ARGV[a + 5])
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
  -- One entry in the call's log, whoever receives it: each reader skips its own (field f).
  local created = false
  local r = redis.pcall('XADD', klog, 'NOMKSTREAM', 'MAXLEN', '~', cap, id, 'f', from, 'm', msg)
  if not r then
    created = true
    r = redis.pcall('XADD', klog, 'MAXLEN', '~', cap, id, 'f', from, 'm', msg)
  end
  if type(r) == 'table' and r.err then
    -- Not stored, so not sent: lift the counter to the log's last id (left above it by a
    -- partial data loss) so the resend fits.
    local top = log_top(klog)
    if top and top >= seq then redis.call('SET', kseq, string.format('%d', top)) end
    return 'log write failed: ' .. tostring(r.err)
  end
  if created then redis.call('PEXPIRE', klog, log_ttl) end
  redis.call('PUBLISH', kchan, msg)
  return seq
end
local out = {}
local a = 5
for r = 1, #KEYS / 6 do
  local k = (r - 1) * 6
  out[r] = relay(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6], a)
  a = a + 6
end
return out
