-- Cancels an order, once: its units go back to the sale's stock and to the
-- buyer's holding, and a `cancelled` event follows on the order stream. A
-- sale that had sold out is announced as released, so every gateway sells
-- again. The order is found in the order index, never in the stream
-- (which subscribers' acknowledgements trim).
--
-- KEYS[1] sale hash, KEYS[2] users hash, KEYS[3] order stream, KEYS[4]
-- order index.
-- ARGV[1] order id, ARGV[2] event channel, ARGV[3] sale id.
--
-- Returns {} for an unknown order, else {rid, user, qty, placed at ms,
-- cancelled at ms, repeat (0/1)}.
local raw = redis.call('HGET', KEYS[4], ARGV[1])
if not raw then
  return {}
end
local o = cjson.decode(raw)
if o.cancelled then
  return {o.rid, o.user, o.qty, o.at, o.cancelled, 1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local f = redis.call('HMGET', KEYS[1], 'stock', 'sold')
local stock, sold = tonumber(f[1]) or 0, tonumber(f[2]) or 0
local qty = tonumber(o.qty)
redis.call('HSET', KEYS[1], 'sold', math.max(sold - qty, 0))
local held = tonumber(redis.call('HGET', KEYS[2], o.user)) or 0
if held <= qty then
  redis.call('HDEL', KEYS[2], o.user)
else
  redis.call('HSET', KEYS[2], o.user, held - qty)
end
o.cancelled = now
redis.call('HSET', KEYS[4], ARGV[1], cjson.encode(o))
redis.call('XADD', KEYS[3], '*', 'event', 'cancelled', 'order_id', ARGV[1],
  'request_id', o.rid, 'user_id', o.user, 'quantity', qty, 'at_ms', now)
if sold >= stock then
  redis.call('PUBLISH', ARGV[2], 'released:' .. ARGV[3])
end
return {o.rid, o.user, qty, o.at, now, 0}
