-- Deletes a sale's catalog entry, holdings, orders and tokens.
-- KEYS: sale hash, users hash, order stream, token list.
-- Returns 1 if the sale existed.
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return existed
