-- Releases the generator lease if this instance holds it.
-- KEYS[1] generator lease. ARGV[1] instance.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
