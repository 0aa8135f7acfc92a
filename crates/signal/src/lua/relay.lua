-- relay.lua: see the doc comment of `RELAY_LUA` in crates/signal/src/hub.rs.
-- Every argument and every string built here costs Redis a hash of all its bytes and a
-- collection later (callgrind): the common path builds two strings (the number, the message)
-- and reads four keys and five arguments per relay.
local cap, log_ttl, ttl, epochs, expiry = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1', ARGV[5]
local find, format = string.find, string.format
-- The keys every relay needs come in KEYS; the two a relay reads only on a rare path (the
-- call's record when the sender has no seat, the seq epoch under Sentinel) are the peers
-- key's siblings, built when needed (same hash tag, so the same slot on a cluster).
local function sibling(kpeers, suffix) return string.sub(kpeers, 1, -7) .. suffix end
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
local function relay(kpeers, kseq, kchan, klog, a)
  local from, conn = ARGV[a], ARGV[a + 1]
  -- The seat check reads one field: the log needs no list of recipients.
  local mine = redis.call('HGET', kpeers, from)
  if mine then
    -- The seat's connection is what follows `role|state|expiry|` (`conn_of` in presence.lua):
    -- compared in place instead of captured into a new string.
    local _, e = find(mine, '^%a+|%a|%d+|')
    if e ~= #mine - #conn or not find(mine, conn, e + 1, true) then return -1 end
  else
    -- No seat: the call ended (every script that ends a call drops its seats in the same
    -- step), or Redis lost the seats (restart) and this relay rewrites its own.
    if redis.call('HGET', sibling(kpeers, ''), 'status') == 'ended' then return -2 end
    redis.call('HSET', kpeers, from, ARGV[a + 5] .. '|L|' .. expiry .. '|' .. conn)
  end
  -- Failover (under Sentinel): a primary that died may have issued (and delivered) numbers it
  -- never replicated. When the primary changed since this call's last relay (another
  -- replication id), jump past any of them, so no receiver ever sees a number twice
  -- (docs/operations.md).
  if epochs then
    local kepoch = sibling(kpeers, ':seq-epoch')
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
  local lifted = seq <= floor
  if lifted then
    seq = floor + 1
    redis.call('SET', kseq, format('%d', seq))
  end
  -- Lua's own number-to-string conversion prints 1e+15; '%d' always gives the integer. The
  -- same text is the log entry's id (`n` is `n-0`).
  local n = format('%d', seq)
  local msg = ARGV[a + 2] .. n .. ARGV[a + 3]
  -- One entry in the call's log, whoever receives it: field = sender (each reader skips its
  -- own), value = the message.
  local r = redis.pcall('XADD', klog, n, from, msg)
  if type(r) == 'table' and r.err then
    -- Not stored, so not sent: lift the counter to the log's last id (left above it by a
    -- partial data loss) so the resend fits.
    local top = log_top(klog)
    if top and top >= seq then redis.call('SET', kseq, format('%d', top)) end
    return 'log write failed: ' .. tostring(r.err)
  end
  -- Upkeep every 64th number (the first one creates the log) and after a lift: the counter's
  -- and the log's TTLs (the lease tick renews the log's too), and the log's cap.
  if lifted or seq % 64 == 1 then
    redis.call('EXPIRE', kseq, ttl)
    redis.call('PEXPIRE', klog, log_ttl)
    redis.call('XTRIM', klog, 'MAXLEN', '~', cap)
  end
  redis.call(PUBLISH, kchan, msg)
  return seq
end
local out = {}
local a = 6
for r = 1, #KEYS / 4 do
  local k = (r - 1) * 4
  out[r] = relay(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], a)
  a = a + 6
end
return out
