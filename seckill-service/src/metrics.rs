//! The service's metrics: described once by the binary, handles resolved
//! once. Names and labels are those of `docs/API.md`.

use std::collections::HashMap;
use std::sync::Mutex;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Histogram, Unit};

/// Describes every metric a seckill-service process exposes: the
/// service's own and those of the stores it runs on. A binary calls it once,
/// after installing the recorder.
pub fn describe() {
    describe_counter!(
        "seckill_service_processed_total",
        "Purchase requests decided, by result."
    );
    describe_counter!(
        "seckill_service_expired_total",
        "Requests dropped because their deadline had passed."
    );
    describe_histogram!(
        "seckill_service_queue_wait_seconds",
        Unit::Seconds,
        "Time from enqueue to pick-up by a worker."
    );
    describe_histogram!(
        "seckill_service_process_duration_seconds",
        Unit::Seconds,
        "Time to decide and report one batch."
    );
    describe_counter!(
        "seckill_callbacks_sent_total",
        "Results sent to gateways, by result (ok, error)."
    );
    describe_counter!(
        "seckill_callback_total",
        "Deprecated, use seckill_callbacks_sent_total (services) and seckill_callbacks_received_total (gateways)."
    );
    describe_counter!(
        "seckill_service_reclaimed_total",
        "Queue entries this consumer took over after they sat unacknowledged past the reclaim time (a crashed or stuck consumer's), by sale."
    );
    describe_counter!(
        "seckill_service_redelivered_total",
        "Queue entries decided again after an earlier delivery, by sale."
    );
    describe_counter!(
        "seckill_service_dead_lettered_total",
        "Queue entries given up on after too many deliveries (moved to the dead-letter stream, rejected), by sale."
    );
    seckill_redis::commands::describe();
    describe_gauge!("seckill_stock_remaining", "Units left, by sale.");
    describe_gauge!(
        "seckill_tokens_available",
        "Tokens in the sale's token queue."
    );
    describe_counter!(
        "seckill_tokens_issued_total",
        "Tokens the generator put into the token queue."
    );
    describe_counter!(
        "seckill_tokens_taken_total",
        "Tokens taken by purchase requests."
    );
    describe_counter!(
        "seckill_tokens_discarded_total",
        "Tokens discarded because the token queue was full."
    );
    describe_gauge!(
        "seckill_queue_depth",
        "Requests waiting in the sale's queue."
    );
    describe_counter!(
        "seckill_queue_enqueued_total",
        "Requests put on the sale's queue."
    );
}

/// Handles of the service's hot-path metrics, resolved once.
pub struct ServiceMetrics {
    pub success: Counter,
    pub sold_out: Counter,
    pub limit_exceeded: Counter,
    pub rejected: Counter,
    pub duplicate: Counter,
    pub expired: Counter,
    pub queue_wait: Histogram,
    pub process_duration: Histogram,
    /// `seckill_callbacks_sent_total` and its deprecated alias
    /// `seckill_callback_total`, which count the same.
    pub callback_ok: [Counter; 2],
    pub callback_error: [Counter; 2],
    /// Per-sale counters of entries delivered again, by sale: looked up
    /// once per sale of a batch.
    again: Mutex<HashMap<String, Again>>,
}

/// A sale's counters of entries delivered more than once.
#[derive(Clone)]
pub struct Again {
    pub redelivered: Counter,
    pub dead_lettered: Counter,
}

impl ServiceMetrics {
    pub fn new() -> Self {
        let processed =
            |r: &'static str| metrics::counter!("seckill_service_processed_total", "result" => r);
        ServiceMetrics {
            success: processed("success"),
            sold_out: processed("sold_out"),
            limit_exceeded: processed("limit_exceeded"),
            rejected: processed("rejected"),
            duplicate: processed("duplicate"),
            expired: metrics::counter!("seckill_service_expired_total"),
            queue_wait: metrics::histogram!("seckill_service_queue_wait_seconds"),
            process_duration: metrics::histogram!("seckill_service_process_duration_seconds"),
            callback_ok: sent("ok"),
            callback_error: sent("error"),
            again: Mutex::default(),
        }
    }

    /// The counters of entries of `sale_id` delivered more than once.
    pub fn again(&self, sale_id: &str) -> Again {
        let mut again = self.again.lock().unwrap_or_else(|e| e.into_inner());
        again
            .entry(sale_id.to_string())
            .or_insert_with(|| {
                let sale = sale_id.to_string();
                Again {
                    redelivered: metrics::counter!("seckill_service_redelivered_total", "sale" => sale.clone()),
                    dead_lettered: metrics::counter!("seckill_service_dead_lettered_total", "sale" => sale),
                }
            })
            .clone()
    }
}

/// Both names of the callbacks sent with `result`.
fn sent(result: &'static str) -> [Counter; 2] {
    [
        metrics::counter!("seckill_callbacks_sent_total", "result" => result),
        metrics::counter!("seckill_callback_total", "result" => result),
    ]
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        Self::new()
    }
}
