//! The relay's metrics, described once at start; names and labels as in
//! docs/API.md.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const RELAYED: &str = "seckill_orders_relayed_total";
pub const LAG: &str = "seckill_orders_lag";
pub const LAG_SECONDS: &str = "seckill_orders_lag_seconds";
pub const DELIVERY: &str = "seckill_orders_delivery_seconds";
pub const DEAD_LETTERS: &str = "seckill_orders_dead_letters";

pub fn describe(sink: &'static str, group: &str) {
    describe_counter!(
        RELAYED,
        "Order events handed to the sink, by result (ok, error: a failed attempt, dead_lettered)"
    );
    describe_gauge!(LAG, "Order events of the group not yet acknowledged");
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest order event the group has not acknowledged"
    );
    describe_histogram!(
        DELIVERY,
        Unit::Seconds,
        "Time from an order event's commit to its delivery by the sink"
    );
    describe_gauge!(DEAD_LETTERS, "Batches in the group's dead-letter stream");
    seckill_redis::commands::describe();
    describe_gauge!("seckill_build_info", "The relay's version, as a label");
    metrics::gauge!("seckill_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Every series from the start, so alerts see zeros, not absence.
    for result in ["ok", "error", "dead_lettered"] {
        metrics::counter!(RELAYED, "sink" => sink, "result" => result).absolute(0);
    }
    metrics::gauge!(LAG, "group" => group.to_string()).set(0.0);
    metrics::gauge!(LAG_SECONDS, "group" => group.to_string()).set(0.0);
    metrics::gauge!(DEAD_LETTERS, "group" => group.to_string()).set(0.0);
}

/// Counts `n` events of `sink` with `result`.
pub fn relayed(sink: &'static str, result: &'static str, n: usize) {
    metrics::counter!(RELAYED, "sink" => sink, "result" => result).increment(n as u64);
}
