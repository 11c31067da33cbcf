-- Removes a sale from the catalog and drops its tokens. A sale that sold
-- nothing is deleted; one that sold keeps its hash, marked removed, with
-- its holdings and order stream: its orders stay readable and in the feed,
-- and its id can never be created and sold again.
-- KEYS: sale hash, users hash, token list.
-- Returns 1 if the sale was live.
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'removed') == '1' then
  redis.call('DEL', KEYS[3])
  return 0
end
redis.call('DEL', KEYS[3])
if (tonumber(redis.call('HGET', KEYS[1], 'sold')) or 0) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  redis.call('HSET', KEYS[1], 'removed', '1')
end
return 1
