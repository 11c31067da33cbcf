-- Records an outcome decided outside the purchase step, unless one was
-- recorded before. KEYS[1] record.
-- ARGV: user, quantity, status, detail, retention ms.
-- Returns {status, detail, duplicate (0/1)}.
local prev = redis.call('HMGET', KEYS[1], 'status', 'detail')
if prev[1] and prev[1] ~= '' then
  return {prev[1], prev[2] or '', 1}
end
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'qty', ARGV[2], 'status', ARGV[3], 'detail', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {ARGV[3], ARGV[4], 0}
