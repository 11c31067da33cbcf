-- The atomic purchase step for a batch of requests of one sale.
--
-- KEYS[1] sale hash, KEYS[2] users hash, KEYS[3] order stream, KEYS[4]
-- order index, then per request i: KEYS[3+2i] its record, KEYS[4+2i] its
-- idempotency key (its record again when it has none).
-- ARGV[1] retention ms, ARGV[2] sale id, ARGV[3] event channel, ARGV[4] n,
-- then per request 6 values: request id, user, quantity, deadline ms,
-- has key ("1"/"0"), order id to use on success.
--
-- Returns per request {status, detail, duplicate (0/1)}.
local t = redis.call('TIME')
-- Milliseconds as a number for comparisons and as text for what is
-- written: Lua turns a number into text with printf, once here.
local now_text = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local now = tonumber(now_text)
local retention = ARGV[1]
local sale = ARGV[2]
local n = tonumber(ARGV[4])

local f = redis.call('HMGET', KEYS[1], 'stock', 'sold', 'per_user_limit', 'starts_at_ms',
  'ends_at_ms', 'max_held', 'removed')
-- A removed sale keeps its hash (for its orders and its id) but sells nothing.
local exists = f[1] ~= false and f[7] ~= '1'
local stock, sold, limit, starts, ends, max_held
if exists then
  stock = tonumber(f[1])
  sold = tonumber(f[2]) or 0
  limit = tonumber(f[3])
  starts = tonumber(f[4])
  ends = tonumber(f[5])
  max_held = tonumber(f[6]) or 0
end
-- sold and max_held are written once, after the batch: the script is
-- atomic, so nothing sees them in between.
local sold0, max_held0 = sold, max_held

local out = {}
-- A command that fails (a key of the wrong type) ends the script but keeps
-- what it wrote before: the loop runs under pcall so that sold always
-- counts every order written, then the error goes on to the caller.
local ok, err = pcall(function()
  for i = 1, n do
    local a = 4 + (i - 1) * 6
    local rid, user, qty_text, deadline, keyed, oid =
      ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4]), ARGV[a + 5], ARGV[a + 6]
    local qty = tonumber(qty_text)
    local req = KEYS[3 + 2 * i]
    local idem = KEYS[4 + 2 * i]
    local status, detail, dup = nil, '', 0

    -- Decided before (a redelivery): the stored outcome, nothing changes.
    local prev = redis.call('HMGET', req, 'status', 'detail')
    if prev[1] and prev[1] ~= '' then
      status, detail, dup = prev[1], prev[2] or '', 1
    elseif not exists then
      status, detail = 'rejected', 'sale_removed'
    elseif keyed == '1' then
      local first = redis.call('GET', idem)
      if first and first ~= rid then
        -- The key's first request decides; a second one never buys.
        local fr = redis.call('HMGET', '{sale:' .. sale .. '}:req:' .. first, 'status', 'detail')
        if fr[1] and fr[1] ~= '' then
          status, detail = fr[1], fr[2] or ''
        else
          status, detail = 'rejected', 'duplicate_in_flight'
        end
        dup = 1
      elseif not first then
        redis.call('SET', idem, rid, 'PX', retention)
      end
    end

    if not status then
      if now > deadline then
        status = 'expired'
      elseif ends and now >= ends then
        status, detail = 'rejected', 'sale_ended'
      elseif starts and now < starts then
        status, detail = 'rejected', 'sale_not_started'
      elseif stock - sold < qty then
        -- Not enough left; a buyer over the limit still hears that first.
        local held = tonumber(redis.call('HGET', KEYS[2], user)) or 0
        if held + qty > limit then
          status = 'limit_exceeded'
        else
          status = 'sold_out'
        end
      else
        -- Take the units for the buyer first and give them back when that
        -- goes over the limit: one command for the common case.
        local now_held = redis.call('HINCRBY', KEYS[2], user, qty)
        if now_held > limit then
          if now_held == qty then
            redis.call('HDEL', KEYS[2], user)
          else
            redis.call('HINCRBY', KEYS[2], user, -qty)
          end
          status = 'limit_exceeded'
        else
          sold = sold + qty
          -- The most any buyer holds: a per-user limit is never lowered below it.
          if now_held > max_held then
            max_held = now_held
          end
          redis.call('XADD', KEYS[3], '*', 'order_id', oid, 'request_id', rid,
            'user_id', user, 'quantity', qty_text, 'at_ms', now_text)
          redis.call('HSET', KEYS[4], oid,
            '{"rid":' .. cjson.encode(rid) .. ',"user":' .. cjson.encode(user) ..
            ',"qty":' .. qty_text .. ',"at":' .. now_text .. '}')
          status, detail = 'success', oid
          if sold == stock then
            redis.call('PUBLISH', ARGV[3], 'sold_out:' .. sale)
          end
        end
      end
    end

    if dup == 0 then
      -- The record its admission wrote keeps that expiry (its retention
      -- counts from the admission, seconds before); HSET adds no field to
      -- it. One gone meanwhile is written anew, with an expiry of its own.
      if redis.call('HSET', req, 'user', user, 'qty', qty_text, 'status', status, 'detail', detail) > 0 then
        redis.call('PEXPIRE', req, retention)
      end
    end
    out[i] = {status, detail, dup}
  end
end)
if exists and sold ~= sold0 then
  if max_held ~= max_held0 then
    redis.call('HSET', KEYS[1], 'sold', sold, 'max_held', max_held)
  else
    redis.call('HSET', KEYS[1], 'sold', sold)
  end
end
if not ok then
  error(err)
end
return out
