-- Undoes an admission: drops a still-pending record and frees the key if
-- this request holds it.
-- KEYS[1] record, KEYS[2] idempotency key (the record again when none).
-- ARGV: request id, has key ("1"/"0").
if redis.call('HGET', KEYS[1], 'status') == '' then
  redis.call('DEL', KEYS[1])
end
if ARGV[2] == '1' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 0
