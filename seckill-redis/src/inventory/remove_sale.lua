-- Removes a sale from the catalog and drops its tokens. The hash stays,
-- marked removed: with its holdings and order stream when it sold (its
-- orders stay readable and in the feed, and its id can never sell again),
-- or for a day when it sold nothing (so a gateway that missed the event
-- learns the sale was removed, not lost; its id is free meanwhile).
-- KEYS: sale hash, users hash, token list, order index.
-- ARGV[1]: how long an unsold sale's removal record is kept, ms.
-- Returns 1 if the sale was live.
redis.call('DEL', KEYS[3])
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'removed') == '1' then
  return 0
end
redis.call('HSET', KEYS[1], 'removed', '1')
if (tonumber(redis.call('HGET', KEYS[1], 'sold')) or 0) == 0
    and redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
