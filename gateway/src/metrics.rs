//! The gateway's metrics: described once, handles resolved once, so the hot
//! path only bumps atomics. Names and labels are those of `docs/API.md`.

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Histogram, Unit};

use crate::answer::Status;

/// Handles of the gateway's metrics.
pub(crate) struct GatewayMetrics {
    requests: Vec<Counter>,
    durations: Vec<Histogram>,
    pub callback_unknown: Counter,
}

/// Describes every metric a gateway process exposes: its own, and those of
/// the stores and (embedded mode) the seckill workers it runs. A binary
/// calls it once, after installing the recorder.
pub fn describe() {
    seckill_service::metrics::describe();
    describe_counter!(
        "seckill_gateway_requests_total",
        "Purchase requests answered, by outcome."
    );
    describe_histogram!(
        "seckill_gateway_request_duration_seconds",
        Unit::Seconds,
        "Time to answer a purchase request, by outcome."
    );
    describe_gauge!(
        "seckill_gateway_waiting_requests",
        "Admitted requests waiting for their result."
    );
}

impl GatewayMetrics {
    pub fn new() -> Self {
        GatewayMetrics {
            requests: Status::ALL
                .iter()
                .map(|s| metrics::counter!("seckill_gateway_requests_total", "outcome" => s.name()))
                .collect(),
            durations: Status::ALL
                .iter()
                .map(|s| {
                    metrics::histogram!("seckill_gateway_request_duration_seconds", "outcome" => s.name())
                })
                .collect(),
            callback_unknown: metrics::counter!("seckill_callback_total", "result" => "unknown_request"),
        }
    }

    /// Counts one answered purchase request.
    pub fn answered(&self, status: Status, seconds: f64) {
        self.requests[status as usize].increment(1);
        self.durations[status as usize].record(seconds);
    }
}
