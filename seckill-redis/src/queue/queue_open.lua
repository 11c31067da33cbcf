-- Opens a sale's request queue: records the capacity, marks it open and
-- makes sure the stream and its consumer group exist.
-- KEYS[1] queue config hash, KEYS[2] stream. ARGV: capacity, group.
redis.call('HSET', KEYS[1], 'capacity', ARGV[1], 'open', 1)
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[2], ARGV[2], '0', 'MKSTREAM')
if not ok and not string.find(tostring(err), 'BUSYGROUP') then
  return redis.error_reply(tostring(err))
end
return 1
