//! The gateway's metrics: described once, handles resolved once, so the hot
//! path only bumps atomics. Names and labels are those of `docs/API.md`.
//!
//! `/metrics` shows the series of the sales this gateway serves, and no
//! others. The Prometheus recorder cannot forget a series, and its idle
//! timeout is no way out: it would also drop the series of a live sale
//! that is merely quiet, and a handle resolved before the drop (every
//! bucket and queue holds theirs) would then record into nothing for good.
//! So the page is the recorder's, less every line whose `sale` label names
//! a sale no longer in the catalog: a removed sale's series leave with it,
//! from every store implementation alike. Per-sale gauges move on events
//! (a queue on enqueue and take, the stock on a change the catalog sees);
//! a scrape lets each bucket publish what it holds now, which costs one
//! atomic look per live sale and no store round trip.

use std::sync::Arc;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;
use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Histogram, Unit};
use seckill_ops::http::{text, HttpResponse};

use crate::answer::Status;
use crate::catalog::{Catalog, OTHER_SALE};
use crate::Shared;

/// Handles of the gateway's metrics.
pub(crate) struct GatewayMetrics {
    requests: Vec<Counter>,
    durations: Vec<Histogram>,
    /// `seckill_callbacks_received_total{result="ok"}`. Not under the
    /// deprecated name: there `ok` is the services' count of results sent,
    /// which an embedded gateway's workers count already.
    pub callback_delivered: Counter,
    /// `seckill_callbacks_received_total` and its deprecated alias
    /// `seckill_callback_total`, which count the same.
    pub callback_unknown: [Counter; 2],
}

/// Both names of the callback results received with `result`.
pub(crate) fn received(result: &'static str) -> [Counter; 2] {
    [
        metrics::counter!("seckill_callbacks_received_total", "result" => result),
        metrics::counter!("seckill_callback_total", "result" => result),
    ]
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
    describe_counter!(
        "seckill_sale_requests_total",
        "Purchase requests answered, by sale (\"(other)\": one the gateway does not hold) and outcome."
    );
    describe_histogram!(
        "seckill_sale_request_duration_seconds",
        Unit::Seconds,
        "Time to answer a purchase request, by sale (\"(other)\": one the gateway does not hold)."
    );
    describe_counter!(
        "seckill_callbacks_received_total",
        "Results gateways received from services, by result (ok, unknown_request, unauthenticated)."
    );
    describe_gauge!(
        "seckill_store_lost_sales",
        "Sales this gateway served that the store lost (no removal recorded); refused with 503 store_lost."
    );
    describe_gauge!(
        "seckill_gateway_waiting_requests",
        "Admitted requests waiting for their result."
    );
    describe_counter!(
        "seckill_store_commits_total",
        "Transactions the durable embedded store committed (group commit: one per group of worker batches)."
    );
    describe_counter!(
        "seckill_store_fsyncs_total",
        "Fsyncs of the durable embedded store: one per commit, two per checkpoint."
    );
    describe_counter!(
        "seckill_gateway_refusals_total",
        "Purchases refused (429, 503), by sale (\"(other)\": one the gateway does not hold) and reason."
    );
    describe_gauge!(
        "seckill_sale_sold_out_timestamp_seconds",
        "When this gateway saw the sale sell out, Unix seconds (0: it has stock again)."
    );
    describe_gauge!(
        "seckill_waiting_buyers",
        "Buyers waiting in a fifo sale's line at this gateway, for a token."
    );
    describe_histogram!(
        "seckill_gateway_wait_duration_seconds",
        Unit::Seconds,
        "Time a fifo buyer waited in line for its token."
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
            callback_delivered: metrics::counter!("seckill_callbacks_received_total", "result" => "ok"),
            callback_unknown: received("unknown_request"),
        }
    }

    /// Counts one answered purchase request.
    pub fn answered(&self, status: Status, seconds: f64) {
        self.requests[status as usize].increment(1);
        self.durations[status as usize].record(seconds);
    }
}

/// `GET /metrics`: the recorder's page, limited to the sales of `shared`'s
/// catalog. Rendered off the runtime's threads: with thousands of sales
/// the page is large, and no request should wait behind it.
pub(crate) async fn response(shared: Arc<Shared>) -> HttpResponse {
    let body = tokio::task::spawn_blocking(move || {
        for entry in shared.catalog.entries() {
            // A memory bucket refills, and sets its gauge, when looked at.
            entry.bucket.available();
        }
        live_only(&seckill_ops::metrics::render(), &shared.catalog)
    })
    .await
    .unwrap_or_default();
    let mut resp = text(StatusCode::OK, body);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The Prometheus text `page` without the samples of sales not in `catalog`.
fn live_only(page: &str, catalog: &Catalog) -> String {
    live_only_by(page, |sale| sale == OTHER_SALE || catalog.contains(sale))
}

fn live_only_by(page: &str, live: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(page.len());
    for line in page.lines() {
        if let Some(sale) = sale_label(line) {
            if !live(sale) {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The `sale` label of a sample line. Sale ids are `[A-Za-z0-9_-]`, so the
/// value needs no unescaping and ends at the next quote.
fn sale_label(line: &str) -> Option<&str> {
    if line.starts_with('#') {
        return None;
    }
    let labels = &line[line.find('{')? + 1..line.find('}')?];
    let at = if labels.starts_with("sale=\"") {
        0
    } else {
        labels.find(",sale=\"")? + 1
    };
    let value = &labels[at + "sale=\"".len()..];
    Some(&value[..value.find('"')?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_of_other_sales_are_left_out() {
        let page = "# HELP seckill_queue_depth Entries waiting.\n\
                    # TYPE seckill_queue_depth gauge\n\
                    seckill_queue_depth{sale=\"a\"} 1\n\
                    seckill_queue_depth{sale=\"gone\"} 2\n\
                    seckill_gateway_refusals_total{reason=\"no_token\",sale=\"gone\"} 3\n\
                    seckill_gateway_refusals_total{reason=\"no_token\",sale=\"a\"} 4\n\
                    seckill_gateway_requests_total{outcome=\"success\"} 5\n\
                    seckill_build_info 1\n";
        let kept = live_only_by(page, |s| s == "a");
        assert_eq!(
            kept,
            "# HELP seckill_queue_depth Entries waiting.\n\
             # TYPE seckill_queue_depth gauge\n\
             seckill_queue_depth{sale=\"a\"} 1\n\
             seckill_gateway_refusals_total{reason=\"no_token\",sale=\"a\"} 4\n\
             seckill_gateway_requests_total{outcome=\"success\"} 5\n\
             seckill_build_info 1\n"
        );
    }

    #[test]
    fn sale_label_is_found_anywhere_among_the_labels() {
        assert_eq!(sale_label(r#"m{sale="s-1"} 1"#), Some("s-1"));
        assert_eq!(sale_label(r#"m{a="x",sale="s_2",b="y"} 1"#), Some("s_2"));
        assert_eq!(sale_label(r#"m{presale="x"} 1"#), None);
        assert_eq!(sale_label("m 1"), None);
        assert_eq!(sale_label(r#"# HELP m about {sale="x"}"#), None);
    }
}
