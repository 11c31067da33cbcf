-- Records an admitted request as pending and claims its idempotency key.
-- KEYS[1] record, KEYS[2] idempotency key (the record again when none).
-- ARGV: request id, has key ("1"/"0"), retention ms, user, quantity, the
-- Unix ms after which the gateway no longer waits for this (0 = none).
-- Returns "" when admitted, "!late" when it ran after that (nothing
-- recorded), else the id of the request that holds the key.
local by = tonumber(ARGV[6]) or 0
if by > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > by then
    return '!late'
  end
end
if ARGV[2] == '1' then
  if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[3]) then
    return redis.call('GET', KEYS[2])
  end
end
redis.call('HSET', KEYS[1], 'user', ARGV[4], 'qty', ARGV[5], 'status', '', 'detail', '')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return ''
