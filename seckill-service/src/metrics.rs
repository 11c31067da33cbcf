//! The service's metrics, and the Prometheus recorder every binary of the
//! project installs. Names and labels are those of `API.md`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: sub-millisecond to the longest deadline.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder once and returns its
/// handle; later calls return the same handle (tests run many servers in
/// one process).
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(SECONDS_BUCKETS)
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                // Histograms buffer samples until drained; drain them
                // regularly so memory stays flat between scrapes.
                let h = handle.clone();
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        tick.tick().await;
                        h.run_upkeep();
                    }
                });
            }
            handle
        })
        .clone()
}

fn describe() {
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
        // The recorder must exist before handles are resolved.
        let _ = recorder();
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
