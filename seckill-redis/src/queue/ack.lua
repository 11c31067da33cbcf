-- Acknowledges and deletes decided entries. A missing group (the stream
-- was lost) is not an error: the entries are gone either way.
-- KEYS[1] stream. ARGV: group, ids...
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
pcall(redis.call, 'XACK', KEYS[1], ARGV[1], unpack(ids))
return redis.call('XDEL', KEYS[1], unpack(ids))
