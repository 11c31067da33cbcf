-- Admits requests of one sale and queues their tickets, in arrival order:
-- per request what admit.lua and enqueue.lua do, with one TIME, one look at
-- the queue's configuration and one XLEN for the whole batch. Nothing is
-- written for a request unless its ticket is queued.
-- KEYS[1] queue config hash, KEYS[2] stream, then per request i:
-- KEYS[1+2i] its record, KEYS[2+2i] its idempotency key (the record again
-- when none); all of one sale's hash tag.
-- ARGV[1] retention ms, ARGV[2] n, then per request 6 values: request id,
-- has key ("1"/"0"), user, quantity, the Unix ms after which the gateway
-- no longer waits for it (0 = none), ticket JSON.
-- Returns per request "" when admitted and queued, "!late" when the script
-- ran after that time, "!full" for a full queue, "!closed" for no open
-- queue, else the id of the request that holds the key (a repeat: it is
-- answered, even when the queue is full).
local retention = ARGV[1]
local n = tonumber(ARGV[2])
local now, len
local cfg = redis.call('HMGET', KEYS[1], 'capacity', 'open')
local open = cfg[2] == '1'
local capacity = tonumber(cfg[1]) or 0
local out = {}
for i = 1, n do
  local a = 2 + (i - 1) * 6
  local rid, keyed, user, qty, ticket = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 6]
  local by = tonumber(ARGV[a + 5]) or 0
  local rec, idem = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local answer
  if by > 0 then
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    if now > by then
      answer = '!late'
    end
  end
  if not answer and keyed == '1' then
    local holder = redis.call('GET', idem)
    if holder then
      answer = holder
    end
  end
  if not answer and not open then
    answer = '!closed'
  end
  if not answer then
    if not len then
      len = redis.call('XLEN', KEYS[2])
    end
    if len >= capacity then
      answer = '!full'
    end
  end
  if not answer then
    if keyed == '1' then
      redis.call('SET', idem, rid, 'PX', retention)
    end
    redis.call('HSET', rec, 'user', user, 'qty', qty, 'status', '', 'detail', '')
    redis.call('PEXPIRE', rec, retention)
    redis.call('XADD', KEYS[2], '*', 't', ticket)
    len = len + 1
    answer = ''
  end
  out[i] = answer
end
return out
