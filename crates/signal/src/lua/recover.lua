-- recover.lua: see the doc comment of `RECOVER_LUA` in crates/signal/src/hub.rs.
-- KEYS: call, peers, channel, the sender's log, senders. ARGV: pid, conn, n, head, tail,
-- live entry, log ttl ms, ttl s.
local pid, conn, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local mine = redis.call('HGET', KEYS[2], pid)
if mine then
  -- The seat is another connection's: the join that took it moved the log's last id past
  -- this connection's numbers (the fence). This connection is being closed (4002).
  if conn_of(mine) ~= conn then return -1 end
else
  -- No seat: the call ended (every script that ends a call drops its seats in the same step),
  -- or Redis lost the seats (restart) and this relay rewrites its own.
  if redis.call('HGET', KEYS[1], 'status') == 'ended' then return -2 end
  redis.call('HSET', KEYS[2], pid, ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[8])
end
local top = log_top(KEYS[4])
if not top then
  -- The log is gone (Redis lost it, or its TTL ran out): again, with its last id just below
  -- this connection's number, so numbers never go backwards towards the receivers.
  redis.call('XADD', KEYS[4], 'MAXLEN', '0', string.format('%d-1', n - 1), 'f', '')
  redis.call('SADD', KEYS[5], pid)
  redis.call('EXPIRE', KEYS[5], ARGV[8])
  top = n - 1
end
-- The seat is ours and the log holds a number at or above ours: an earlier write of ours
-- landed after its reply was lost (a timeout), or a data loss left the log ahead. Go on above.
local seq = math.max(n, top + 1)
local text = string.format('%d', seq)
local msg = ARGV[4] .. text .. ARGV[5]
redis.call('XADD', KEYS[4], text .. '-0', 'm', msg)
redis.call('PEXPIRE', KEYS[4], ARGV[7])
redis.call(PUBLISH, KEYS[3], msg)
return seq
