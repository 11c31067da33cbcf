-- Appends a ticket unless the queue is closed or full. Acknowledged entries
-- are deleted, so the stream's length is exactly the backlog (unread plus
-- delivered-but-unacknowledged): the bound covers both, and nothing that
-- was not consumed is ever trimmed.
-- KEYS[1] queue config hash, KEYS[2] stream. ARGV: ticket JSON, the Unix
-- ms after which the gateway no longer waits for it (0 = none).
-- Returns 1 queued, 0 full, -1 no open queue, -2 too late (nothing queued:
-- the buyer was answered already, so it must not be decided).
local by = tonumber(ARGV[2]) or 0
if by > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > by then
    return -2
  end
end
local cfg = redis.call('HMGET', KEYS[1], 'capacity', 'open')
if cfg[2] ~= '1' then
  return -1
end
if redis.call('XLEN', KEYS[2]) >= tonumber(cfg[1]) then
  return 0
end
redis.call('XADD', KEYS[2], '*', 't', ARGV[1])
return 1
