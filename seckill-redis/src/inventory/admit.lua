-- Records an admitted request as pending and claims its idempotency key.
-- KEYS[1] record, KEYS[2] idempotency key (the record again when none).
-- ARGV: request id, has key ("1"/"0"), retention ms, user, quantity.
-- Returns "" when admitted, else the id of the request that holds the key.
if ARGV[2] == '1' then
  if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[3]) then
    return redis.call('GET', KEYS[2])
  end
end
redis.call('HSET', KEYS[1], 'user', ARGV[4], 'qty', ARGV[5], 'status', '', 'detail', '')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return ''
