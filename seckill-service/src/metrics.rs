//! The service's metrics: described once by the binary, handles resolved
//! once. Names and labels are those of `docs/API.md`.

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
        "seckill_callback_total",
        "Results delivered to gateways, by result."
    );
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
    pub callback_ok: Counter,
    pub callback_error: Counter,
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
            callback_ok: metrics::counter!("seckill_callback_total", "result" => "ok"),
            callback_error: metrics::counter!("seckill_callback_total", "result" => "error"),
        }
    }
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        Self::new()
    }
}
