#!lua
-- Readiness probe: proves the server accepts writes, and writes nothing.
--
-- The shebang with no `no-writes` flag declares this a writing script, so
-- Redis runs the checks it applies to every write *before* running it, and
-- refuses it exactly when it would refuse a purchase: OOM (at `maxmemory`
-- with nothing to evict), MISCONF (persistence failing), NOREPLICAS
-- (`min-replicas-to-write` not met), READONLY (a replica). Having no keys,
-- it can be sent to every primary of a cluster, and it leaves nothing behind.
return 1
