-- Admits a request and queues its ticket in one step: admit.lua and
-- enqueue.lua together, one round trip and one TIME instead of two. Nothing
-- is written unless the ticket is queued.
-- KEYS[1] record, KEYS[2] idempotency key (the record again when none),
-- KEYS[3] queue config hash, KEYS[4] stream (all of one sale's hash tag).
-- ARGV: request id, has key ("1"/"0"), retention ms, user, quantity, the
-- Unix ms after which the gateway no longer waits for this (0 = none),
-- ticket JSON.
-- Returns "" when admitted and queued, "!late" when it ran after that
-- time, "!full" for a full queue, "!closed" for no open queue, else the id
-- of the request that holds the key (a repeat: it is answered, even when
-- the queue is full).
local by = tonumber(ARGV[6]) or 0
if by > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > by then
    return '!late'
  end
end
if ARGV[2] == '1' then
  local holder = redis.call('GET', KEYS[2])
  if holder then
    return holder
  end
end
local cfg = redis.call('HMGET', KEYS[3], 'capacity', 'open')
if cfg[2] ~= '1' then
  return '!closed'
end
if redis.call('XLEN', KEYS[4]) >= tonumber(cfg[1]) then
  return '!full'
end
if ARGV[2] == '1' then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
end
redis.call('HSET', KEYS[1], 'user', ARGV[4], 'qty', ARGV[5], 'status', '', 'detail', '')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[4], '*', 't', ARGV[7])
return ''
