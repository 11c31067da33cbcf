-- Creates a sale, or replaces one that has sold nothing.
-- KEYS[1] sale hash, KEYS[2] users hash, KEYS[3] order stream, KEYS[4]
-- order index (a sale whose orders were all cancelled sold all the same).
-- ARGV: spec JSON, stock, per-user limit, starts_at_ms, ends_at_ms ("" = unset).
-- Returns 1 created, 0 replaced, -1 has sales already, -2 removed with its
-- orders kept (the id can never sell again).
local created = 1
if redis.call('EXISTS', KEYS[1]) == 1 then
  local removed = redis.call('HGET', KEYS[1], 'removed') == '1'
  local sold = tonumber(redis.call('HGET', KEYS[1], 'sold')) or 0
  sold = sold + redis.call('HLEN', KEYS[4])
  if removed and sold > 0 then
    return -2
  end
  if sold > 0 then
    return -1
  end
  if removed then
    -- An unsold sale's removal record: the id is free again.
    redis.call('DEL', KEYS[1])
  else
    created = 0
  end
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'stock', ARGV[2], 'sold', 0,
  'per_user_limit', ARGV[3], 'starts_at_ms', ARGV[4], 'ends_at_ms', ARGV[5])
return created
