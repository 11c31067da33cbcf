-- Appends a ticket unless the queue is closed or full. Acknowledged entries
-- are deleted, so the stream's length is exactly the backlog (unread plus
-- delivered-but-unacknowledged): the bound covers both, and nothing that
-- was not consumed is ever trimmed.
-- KEYS[1] queue config hash, KEYS[2] stream. ARGV: ticket JSON.
-- Returns 1 queued, 0 full, -1 no open queue.
local cfg = redis.call('HMGET', KEYS[1], 'capacity', 'open')
if cfg[2] ~= '1' then
  return -1
end
if redis.call('XLEN', KEYS[2]) >= tonumber(cfg[1]) then
  return 0
end
redis.call('XADD', KEYS[2], '*', 't', ARGV[1])
return 1
