-- Changes a live sale's definition, if it is still the one the caller read
-- (compare and set on the spec) and the new one does not break what was
-- sold.
-- KEYS[1] sale hash.
-- ARGV: the spec read, the new spec JSON, stock, per-user limit,
-- starts_at_ms, ends_at_ms ("" = unset).
-- Returns {1, sold} changed, {0} changed meanwhile (read again), {-1} no
-- such sale, {-2, sold} stock below sold, {-3, most held} limit below it.
local f = redis.call('HMGET', KEYS[1], 'spec', 'sold', 'max_held', 'removed')
if not f[1] or f[4] == '1' then
  return {-1}
end
if f[1] ~= ARGV[1] then
  return {0}
end
local sold = tonumber(f[2]) or 0
local held = tonumber(f[3]) or 0
if tonumber(ARGV[3]) < sold then
  return {-2, sold}
end
if tonumber(ARGV[4]) < held then
  return {-3, held}
end
redis.call('HSET', KEYS[1], 'spec', ARGV[2], 'stock', ARGV[3], 'per_user_limit', ARGV[4],
  'starts_at_ms', ARGV[5], 'ends_at_ms', ARGV[6])
return {1, sold}
