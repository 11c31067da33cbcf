-- Moves entries to the dead-letter stream (bounded, approximately), then
-- acknowledges and deletes them from the request stream.
-- KEYS[1] stream, KEYS[2] dead-letter stream.
-- ARGV: group, max dead letters, then per entry: id, ticket JSON, deliveries.
local ids = {}
for i = 3, #ARGV, 3 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
    't', ARGV[i + 1], 'entry', ARGV[i], 'deliveries', ARGV[i + 2])
  ids[#ids + 1] = ARGV[i]
end
if #ids > 0 then
  pcall(redis.call, 'XACK', KEYS[1], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
return #ids
