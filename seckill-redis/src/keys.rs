//! Every Redis key the store uses, in one place.
//!
//! All keys of a sale carry the hash tag `{sale:ID}`, so in a Redis Cluster
//! they live in one slot and a sale's scripts run on one shard, while
//! different sales spread over the shards. The two global sets sit in slots
//! of their own and never appear in a command together with a sale's keys;
//! their names start with a namespace (`seckill` unless configured), so
//! deployments can share a Redis as long as their sale ids differ.
//!
//! Only tests read these names from outside the crate: the load harness
//! audits through the gateway's API (the order feed and the sale).

/// The default namespace of the global keys.
pub const NAMESPACE: &str = "seckill";

/// Set of all sale ids: `seckill:sales` in the default namespace.
pub fn sales(namespace: &str) -> String {
    format!("{namespace}:sales")
}

/// Set of every sale id ever defined, removed ones included (the order
/// feed reads their streams): `seckill:order_sales` in the default namespace.
pub fn order_sales(namespace: &str) -> String {
    format!("{namespace}:order_sales")
}

/// Set of the sale ids whose request queues consumers read:
/// `seckill:queues` in the default namespace.
pub fn queues(namespace: &str) -> String {
    format!("{namespace}:queues")
}

/// Pub/sub channel of catalog events (`changed:ID`, `removed:ID`,
/// `sold_out:ID`): `seckill:events` in the default namespace.
pub fn events(namespace: &str) -> String {
    format!("{namespace}:events")
}
/// The consumer group of every request stream.
pub const GROUP: &str = "seckill";

fn tag(sale_id: &str) -> String {
    format!("{{sale:{sale_id}}}")
}

/// Hash: `spec` (JSON), `stock`, `sold`, `per_user_limit`, `starts_at_ms`,
/// `ends_at_ms` (empty when unset).
pub fn sale(sale_id: &str) -> String {
    format!("{}:sale", tag(sale_id))
}

/// Hash: user id → units held.
pub fn users(sale_id: &str) -> String {
    format!("{}:users", tag(sale_id))
}

/// Stream of order events: `order_id`, `request_id`, `user_id`, `quantity`, `at_ms`.
pub fn orders(sale_id: &str) -> String {
    format!("{}:orders", tag(sale_id))
}

/// Hash: order id → the order as placed (JSON `rid`, `user`, `qty`, `at`,
/// and `cancelled` ms once cancelled). Never trimmed, unlike the stream:
/// a cancellation finds its order here.
pub fn order_index(sale_id: &str) -> String {
    format!("{}:order_index", tag(sale_id))
}

/// Hash of a request's record: `user`, `qty`, `status` (empty while
/// pending), `detail` (order id or reason). Expires after the retention.
pub fn request(sale_id: &str, request_id: &str) -> String {
    format!("{}:req:{request_id}", tag(sale_id))
}

/// String: the request id that claimed `(user, key)`. Expires after the
/// retention. Idempotency keys hold no `:`, so the name is unambiguous.
pub fn idempotency(sale_id: &str, user_id: &str, key: &str) -> String {
    format!("{}:idem:{user_id}:{key}", tag(sale_id))
}

/// List of tokens.
pub fn tokens(sale_id: &str) -> String {
    format!("{}:tokens", tag(sale_id))
}

/// String: the instance holding the generator lease (with expiry).
pub fn generator(sale_id: &str) -> String {
    format!("{}:gen", tag(sale_id))
}

/// Hash: the generator's schedule (`at` in µs of Redis time, `rem`).
pub fn generator_clock(sale_id: &str) -> String {
    format!("{}:genclock", tag(sale_id))
}

/// Hash of fair admission's line: `issued` (the last ticket handed out)
/// and `served` (the last ticket that has its token).
pub fn line(sale_id: &str) -> String {
    format!("{}:line", tag(sale_id))
}

/// Stream of queued requests (field `t`: the ticket as JSON).
pub fn queue(sale_id: &str) -> String {
    format!("{}:q", tag(sale_id))
}

/// Hash: the queue's `capacity` and `open` flag.
pub fn queue_config(sale_id: &str) -> String {
    format!("{}:qcfg", tag(sale_id))
}

/// Stream of dead-lettered requests.
pub fn dead_letters(sale_id: &str) -> String {
    format!("{}:dlq", tag(sale_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sale_keys_share_the_hash_tag() {
        for k in [
            sale("s1"),
            users("s1"),
            orders("s1"),
            order_index("s1"),
            request("s1", "s1.00ab"),
            idempotency("s1", "u:1", "k"),
            tokens("s1"),
            generator("s1"),
            generator_clock("s1"),
            line("s1"),
            queue("s1"),
            queue_config("s1"),
            dead_letters("s1"),
        ] {
            assert!(k.starts_with("{sale:s1}:"), "{k}");
        }
        assert_eq!(sale("x"), "{sale:x}:sale");
        assert_eq!(orders("x"), "{sale:x}:orders");
    }
}
